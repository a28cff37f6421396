"""Mixtures and the packed loader: packing invariants, labels, loss mask, BFD rows, exact shares, ranks, resume,
validation split. Shards are real files written by ShardWriter with synthetic tokens (no tokenizer needed)."""
import json

import numpy as np
import pytest
import torch

from prism_fast.data import Mixture, PackedDataset, Source, build_loader, build_val_loader, presets
from prism_fast.data.loader import IGNORE_INDEX
from tests.data.conftest import make_shard

L = 97


@pytest.fixture(scope="module")
def mix_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    docs = {}
    specs = {"web": (60, 300, False), "math": (80, 150, True), "code": (40, 500, False)}
    for i, (name, (n, hi, mask)) in enumerate(specs.items()):
        docs[name] = make_shard(root / name, rng.integers(2, hi, size=n), seed=i, mask=mask, domain=name)
    return root, docs


def _mixture(root, **kw):
    return Mixture([Source(root / "web", 2.0), Source(root / "math", 5.0), Source(root / "code", 3.0)], **kw)


def _check_row(row, docs, L):
    """Every segment is a contiguous slice of one document; labels are its next tokens, -100 at the doc end."""
    ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
    t = 0
    for n in row["seg_lens"]:
        assert np.array_equal(pos[t:t + n], np.arange(n))
        t += n
    assert t == L


@pytest.mark.parametrize("packing", ["concat", "bfd"])
def test_no_token_lost_or_duplicated(mix_dirs, packing):
    """Reading one source's rows for an epoch gives back every training token exactly once (concat: in
    the shuffled stream order; bfd without overlap: as a multiset of whole documents)."""
    root, docs = mix_dirs
    mix = _mixture(root, val_fraction=0.1)
    ds = PackedDataset(mix, L, packing=packing, seed=3)
    for src, name in enumerate(["web", "math", "code"]):
        rows = ds.rows[src]
        n_train = mix.split(src)[0]
        train_docs = docs[name][:n_train]
        total = sum(map(len, train_docs))
        if packing == "concat":
            n_rows = total // L
            pieces = []
            for k in range(n_rows + 2):
                pieces.extend(rows.row(k))
            stream = np.concatenate([train_docs[d][s:s + n] for d, s, n in pieces])
            perm = np.random.default_rng([3, src, 0]).permutation(n_train)
            expect = np.concatenate([train_docs[d] for d in perm])
            np.testing.assert_array_equal(stream[:total], expect)
        else:
            got = {}
            for k in range(rows.num_bins):
                for d, s, n in rows.row(k):
                    got.setdefault(d, []).append((s, n))
            assert sorted(got) == list(range(n_train))
            for d, chunks in got.items():
                covered = np.zeros(len(train_docs[d]), int)
                for s, n in chunks:
                    covered[s:s + n] += 1
                assert covered.min() == 1 and covered.max() == 1


@pytest.mark.parametrize("packing,overlap", [("concat", 0), ("bfd", 0), ("bfd", 20)])
def test_batch_layout_labels_and_boundaries(mix_dirs, packing, overlap):
    root, docs = mix_dirs
    mix = _mixture(root)
    loader = build_loader(mix, seq_len=L, micro_batch_size=3, packing=packing, bfd_overlap=overlap, seed=1)
    ds = loader.dataset
    for _ in range(4):
        b = next(loader)
        T = 3 * L
        assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (1, T)
        assert b["input_ids"].dtype == b["labels"].dtype == torch.int64 and b["cu_seqlens"].dtype == torch.int32
        cu = b["cu_seqlens"].tolist()
        assert cu[0] == 0 and cu[-1] == T and all(c % L == 0 or c in cu for c in range(0, T, L))
        assert set(range(0, T + 1, L)) <= set(cu)  # rows never share a segment
        assert b["max_seqlen"] == max(np.diff(cu))
        pos = b["position_ids"][0]
        for s, e in zip(cu[:-1], cu[1:]):
            assert torch.equal(pos[s:e], torch.arange(e - s))
        for r, g in enumerate(b["sample_ids"].tolist()):
            src, k = ds.locate(g)
            name = ["web", "math", "code"][src]
            seg = ds.rows[src].row(k)
            t = r * L
            assert (b["domain_ids"][0, t:t + L] == mix.domains.index(name)).all()
            for d, start, n in seg:
                doc = docs[name][d]
                np.testing.assert_array_equal(b["input_ids"][0, t:t + n], doc[start:start + n])
                tgt = np.append(doc[start + 1:start + n + 1], IGNORE_INDEX)[:n]
                if start + n == len(doc):
                    tgt[-1] = IGNORE_INDEX  # no target across a document boundary
                np.testing.assert_array_equal(b["labels"][0, t:t + n], tgt)
                t += n
            # BFD padding: pad id, no target
            assert (b["labels"][0, t:(r + 1) * L] == IGNORE_INDEX).all()
    loader.close()


def test_loss_mask_prompt(mix_dirs):
    root, docs = mix_dirs
    mix = _mixture(root)
    plain = PackedDataset(mix, L, seed=0)
    masked = PackedDataset(mix, L, seed=0, loss_mask_prompt=True)
    n_masked = 0
    for g in range(40):
        a, b = plain[g], masked[g]
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        src, k = plain.locate(g)
        if src != 1:  # only the math shard has a mask
            np.testing.assert_array_equal(a["labels"], b["labels"])
            continue
        t = 0
        for d, s, n in plain.rows[src].row(k):
            doc_len = len(docs["math"][d])
            for j in range(n):
                target_pos = s + j + 1
                if target_pos >= doc_len:
                    assert b["labels"][t + j] == IGNORE_INDEX
                elif target_pos < doc_len // 2:  # prompt target (first half is prompt in make_shard)
                    assert b["labels"][t + j] == IGNORE_INDEX
                    n_masked += a["labels"][t + j] != IGNORE_INDEX
                else:
                    assert b["labels"][t + j] == a["labels"][t + j]
            t += n
    assert n_masked > 100


def test_exact_shares_and_report(mix_dirs):
    root, _ = mix_dirs
    mix = _mixture(root)
    ds = PackedDataset(mix, L)
    src = np.array([ds.locate(g)[0] for g in range(1000)])
    for n in (1, 7, 97, 1000):
        counts = np.bincount(src[:n], minlength=3)
        assert np.all(np.abs(counts - mix.weights * n) < 1), (n, counts)
    rep = mix.report(1000, L)
    assert [r["samples"] for r in rep] == np.bincount(src, minlength=3).tolist()
    for i, r in enumerate(rep):
        assert r["epochs"] == pytest.approx(r["samples"] * L / mix.train_tokens(i))
    assert "epochs" in mix.format_report(1000, L)


def test_seed_changes_order_and_is_deterministic(mix_dirs):
    root, _ = mix_dirs
    mix = _mixture(root)
    a = [PackedDataset(mix, L, seed=5)[g]["input_ids"] for g in range(6)]
    b = [PackedDataset(mix, L, seed=5)[g]["input_ids"] for g in range(6)]
    c = [PackedDataset(mix, L, seed=6)[g]["input_ids"] for g in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_ranks_disjoint_union_is_global_order(mix_dirs):
    root, _ = mix_dirs
    mix = _mixture(root)
    W, B, steps = 3, 2, 5
    seen = []
    for r in range(W):
        loader = build_loader(mix, seq_len=L, micro_batch_size=B, rank=r, world_size=W, seed=2)
        ids = [next(loader)["sample_ids"].tolist() for _ in range(steps)]
        loader.close()
        seen.append(ids)
    flat = sorted(g for r in range(W) for step in seen[r] for g in step)
    assert flat == list(range(W * B * steps))  # disjoint and complete
    ds = PackedDataset(mix, L, seed=2)
    loader = build_loader(mix, seq_len=L, micro_batch_size=B, rank=1, world_size=W, seed=2, prefetch=0)
    b = next(loader)
    np.testing.assert_array_equal(b["input_ids"][0, :L], ds[1]["input_ids"])
    np.testing.assert_array_equal(b["input_ids"][0, L:], ds[1 + W]["input_ids"])


@pytest.mark.parametrize("packing", ["concat", "bfd"])
def test_resume_exact_including_world_size_change(mix_dirs, packing):
    root, _ = mix_dirs
    mix = _mixture(root)
    rng = np.random.default_rng(7)
    # uninterrupted run: W=2, B=2 (4 samples per step)
    full = [build_loader(mix, seq_len=L, micro_batch_size=2, rank=r, world_size=2, seed=9, packing=packing)
            for r in range(2)]
    ref = [[next(full[r]) for _ in range(12)] for r in range(2)]
    stop = int(rng.integers(1, 8))
    first = [build_loader(mix, seq_len=L, micro_batch_size=2, rank=r, world_size=2, seed=9, packing=packing)
             for r in range(2)]
    for _ in range(stop):
        for ld in first:
            next(ld)
    state = json.loads(json.dumps(first[0].state_dict()))  # survives a JSON / checkpoint round trip
    assert state == first[1].state_dict() and state["cursor"] == stop * 4
    # same world size: identical following batches
    again = build_loader(mix, seq_len=L, micro_batch_size=2, rank=1, world_size=2, seed=9, packing=packing)
    again.load_state_dict(state)
    for s in range(stop, stop + 3):
        b = next(again)
        for key in ("input_ids", "labels", "position_ids", "cu_seqlens", "domain_ids"):
            assert torch.equal(b[key], ref[1][s][key]), key
    # world size 4, micro batch 1: same global samples per step, so step s holds the same rows
    new = [build_loader(mix, seq_len=L, micro_batch_size=1, rank=r, world_size=4, seed=9, packing=packing)
           for r in range(4)]
    for ld in new:
        ld.load_state_dict(state)
    for s in range(stop, stop + 3):
        got = {int(b["sample_ids"][0]): b["input_ids"][0] for b in (next(ld) for ld in new)}
        want = {}
        for r in range(2):
            for j, g in enumerate(ref[r][s]["sample_ids"].tolist()):
                want[g] = ref[r][s]["input_ids"][0, j * L:(j + 1) * L]
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[g], want[g]) for g in got)
    with pytest.raises(ValueError, match="seed"):
        build_loader(mix, seq_len=L, seed=10).load_state_dict(state)
    for ld in full + first + new + [again]:
        ld.close()


def test_validation_split_is_held_out_and_covered(mix_dirs):
    root, docs = mix_dirs
    mix = _mixture(root, val_fraction=0.1)
    ds = PackedDataset(mix, L)
    train_docs = {(ds.locate(g)[0], d) for g in range(400) for d, _, _ in ds.rows[ds.locate(g)[0]].row(ds.locate(g)[1])}
    for i in range(3):
        n_train, n = mix.split(i)
        assert n - n_train == max(1, int(n * 0.1))
        assert not any((i, d) in train_docs for d in range(n_train, n))
    W = 2
    vals = [build_val_loader(mix, seq_len=L, micro_batch_size=2, rank=r, world_size=W) for r in range(W)]
    assert len(vals[0]) == len(vals[1])
    scored = {}
    for r in range(W):
        for b in vals[r]:
            lab, dom = b["labels"][0], b["domain_ids"][0]
            for d in dom[lab != IGNORE_INDEX].unique().tolist():
                scored[d] = scored.get(d, 0) + int(((lab != IGNORE_INDEX) & (dom == d)).sum())
    for i, name in enumerate(["web", "math", "code"]):
        n_train, n = mix.split(i)
        expect = sum(len(docs[name][d]) - 1 for d in range(n_train, n))  # every token but each doc's EOS
        assert scored[mix.domains.index(name)] == expect
    # with the prompt mask, math (the masked shard) scores only targets in each document's second half
    masked = build_val_loader(mix, seq_len=L, loss_mask_prompt=True)
    math_id = mix.domains.index("math")
    got = sum(int(((b["labels"][0] != IGNORE_INDEX) & (b["domain_ids"][0] == math_id)).sum()) for b in masked)
    n_train, n = mix.split(1)
    assert got == sum(len(docs["math"][d]) - 1 - (len(docs["math"][d]) // 2 - 1) for d in range(n_train, n))


def test_presets_exact_percentages(tmp_path):
    for name in presets.PAPER_SOURCES:
        make_shard(tmp_path / name, [5, 6, 7], seed=1)
    expect = {"math_only": {"general": 25, "math": 75}, "mc": {"general": 10, "math": 47.5, "code": 42.5},
              "mcs": {"general": 10, "math": 37, "code": 40.5, "science": 12.5}}
    for mix_name, domains in expect.items():
        mix = getattr(presets, mix_name)(tmp_path)
        assert sum(presets.percentages(mix_name).values()) == pytest.approx(100)
        got = {}
        for s, w in zip(mix.sources, mix.weights):
            got[s.domain] = got.get(s.domain, 0) + 100 * w
        assert got == pytest.approx(domains)
    mcs = presets.mcs(tmp_path)
    assert dict(zip([s.name for s in mcs.sources], 100 * mcs.weights)) == pytest.approx(presets.percentages("mcs"))
    assert str(mcs.sources[4].path).endswith("megamath_web_pro")


_RANK_SCRIPT = """
import json, os, sys, zlib
from prism_fast.data import Mixture, Source, build_loader
root, out = sys.argv[1], sys.argv[2]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
mix = Mixture([Source(f"{root}/web", 2.0), Source(f"{root}/math", 5.0), Source(f"{root}/code", 3.0)])
loader = build_loader(mix, seq_len=97, micro_batch_size=2, rank=rank, world_size=world, seed=4)
rows = {}
for _ in range(4):
    b = next(loader)
    for j, g in enumerate(b["sample_ids"].tolist()):
        rows[g] = zlib.crc32(b["input_ids"][0, j * 97:(j + 1) * 97].numpy().tobytes())
loader.close()
json.dump(rows, open(f"{out}/rank{rank}.json", "w"))
"""


def test_torchrun_ranks_read_disjoint_rows_of_the_global_order(mix_dirs, tmp_path):
    """Real processes launched by torchrun (different PYTHONHASHSEED each): every rank derives the same global
    order on its own, reads only its rows, and together they cover the global order."""
    import subprocess
    import sys
    import zlib

    root, _ = mix_dirs
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(__import__("os").environ, PYTHONHASHSEED="random", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                        str(script), str(root), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {}
    for rank in range(2):
        part = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert not set(part) & set(got)
        got.update({int(g): v for g, v in part.items()})
    assert sorted(got) == list(range(16))
    ds = PackedDataset(_mixture(root), L, seed=4)
    for g, crc in got.items():
        assert zlib.crc32(ds[g]["input_ids"].tobytes()) == crc
