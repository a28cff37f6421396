"""Context parallelism: the chunk layout and segment attention in-process, then real gloo process groups.

Multi-process checks launch this file under torchrun (`__main__` below is the worker): every rank builds the same
tiny model, the CP path (FSDP2 over the flattened (dp_shard, cp) axis, full activation checkpointing, K/V
all-gather with its reduce-scatter backward) runs on sharded packed rows, and rank 0 compares the loss and every
full gradient with the unsharded model on the same rows (the cp=1 result) in the same process.
Trainer-level: a cp=2 midtrain run equals the 1-rank run, and its DCP checkpoint resumes under cp=1.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prism_fast.distributed.context_parallel import (chunk_ranges, cp_attention_ref, gather_order, local_positions,
                                                     plan_segments, segment_attention_sdpa)
from prism_fast.ops.varlen_attention import varlen_attention_ref

ROOT = Path(__file__).resolve().parents[2]
DOCS = [0, 5, 37, 38, 80, 96]       # a packed row of 96 tokens: a 1-token doc, docs across chunk edges


# ---------------------------------------------------------------- layout and attention, one process
@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_chunks_balance_and_cover(cp):
    T = 24 * cp
    held = [local_positions(T, cp, r) for r in range(cp)]
    assert sorted(torch.cat(held).tolist()) == list(range(T))
    causal_work = [int((p + 1).sum()) for p in held]          # keys each rank's queries see in one document
    assert max(causal_work) == min(causal_work), "each rank holds an early and a late chunk"
    gathered = torch.cat(held)
    assert torch.equal(gathered[gather_order(T, cp)], torch.arange(T))


def test_indivisible_row_is_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        chunk_ranges(100, 4, 0)


@pytest.mark.parametrize("cp,window,heads", [(2, -1, (4, 2)), (4, -1, (4, 4)), (4, 6, (6, 2)), (3, 9, (2, 1))])
def test_segment_attention_equals_full_varlen_attention(cp, window, heads):
    """All cp ranks simulated in one process: each rank's queries against the full K/V equal the rows of
    varlen attention over the whole packed row (document masks, GQA and sliding windows preserved)."""
    T, (H, Hkv), Dh = 24 * cp, heads, 8
    cu = [0, 3, 3 + 4 * cp, 3 + 4 * cp + 1, T - 5, T]
    g = torch.Generator().manual_seed(cp)
    q, k, v = (torch.randn(T, n, Dh, generator=g, dtype=torch.float64) for n in (H, Hkv, Hkv))
    full = varlen_attention_ref(q, k, v, torch.tensor(cu), causal=True, window_size=(window, 0))
    for r in range(cp):
        pos = local_positions(T, cp, r)
        segs = plan_segments(cu, chunk_ranges(T, cp, r))
        assert [s[0] for s in segs] == sorted(s[0] for s in segs) and segs[-1][1] == len(pos)
        fast = segment_attention_sdpa(q[pos], k, v, segs, Dh ** -0.5, window)
        ref = cp_attention_ref(q[pos], k, v, pos, cu, window_left=window)
        # the references softmax in fp32; the SDPA path stays in float64
        torch.testing.assert_close(fast, full[pos], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ref, full[pos], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- the long-context recipe and its data
def test_lc_recipe_table17_prints_config_without_weights(tmp_path):
    from prism_fast.recipes import get_recipe
    from tests.train._runs import env
    p = subprocess.run([sys.executable, "-m", "prism_fast.midtrain", "--recipe", "granite_3_3_8b_lc", "--print-config",
                        "--train.trainable=attention"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    c = json.loads(p.stdout)
    assert (c["train"]["steps"], c["optim"]["lr"], c["schedule"]["name"], c["schedule"]["warmup_steps"]) == \
        (1000, 5e-5, "exponential", 100)
    assert (c["parallel"]["cp"], c["parallel"]["dp_shard"], c["parallel"]["dp_replicate"], c["parallel"]["ac"]) == \
        (4, 4, 9, "full")
    assert (c["data"]["seq_len"], c["data"]["packing"], c["train"]["trainable"]) == (131072, "bfd", "attention")
    assert c["data"]["min_doc_tokens"] > 0 and 0 < c["data"]["bfd_overlap"] < c["data"]["seq_len"]
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = get_recipe("granite_3_3_8b_lc")(model_path=str(model), data_root=str(tmp_path / "lc"))
    for s in cfg.data.sources:
        Path(s["path"]).mkdir(parents=True)
    assert cfg.validate(144) == 1                               # 36 data-parallel ranks, one 128k row each
    with pytest.raises(ValueError, match="x cp=4"):
        cfg.validate(128)


def test_bfd_short_document_filter_and_overlapping_chunks(tmp_path):
    from prism_fast.data import Mixture, Source, build_loader
    from tests.data.conftest import make_shard
    make_shard(tmp_path / "lc", [5, 40, 3, 100, 17, 64])
    mix = Mixture([Source(tmp_path / "lc", 1.0, "general")], val_fraction=0.0)
    loader = build_loader(mix, seq_len=32, packing="bfd", bfd_overlap=8, min_doc_tokens=16, prefetch=0)
    segs = loader.dataset.rows[0].segs                          # (doc, start, length) of every packed piece
    assert {int(d) for d in segs[:, 0]} == {1, 3, 4, 5}, "documents shorter than 16 tokens are dropped"
    for doc, n in ((1, 40), (3, 100), (5, 64)):                 # long documents: overlapping 32-token chunks
        chunks = sorted((int(st), int(st + ln)) for d, st, ln in segs if d == doc)
        assert chunks[0][0] == 0 and chunks[-1][1] == n, chunks
        assert all(e1 - s2 >= 8 for (_, e1), (s2, _) in zip(chunks, chunks[1:])), f"chunks overlap: {chunks}"
    assert all(int(ln) <= 32 for ln in segs[:, 2])
    rows = [loader.batch_at(c) for c in range(4)]
    assert all(r["input_ids"].shape == (1, 32) and int(r["cu_seqlens"][-1]) == 32 for r in rows)
    with pytest.raises(ValueError, match="packing='bfd'"):
        build_loader(mix, seq_len=32, packing="concat", min_doc_tokens=16)


# ---------------------------------------------------------------- real process groups
def _torchrun(nproc: int, *args: str, timeout: int = 240) -> dict:
    from tests.train._runs import env
    out = Path(args[args.index("--out") + 1])
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(Path(__file__)), *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"worker failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("nproc,layout,family", [
    (2, "cp=2", "mistral"),                    # sliding window across chunk edges
    (4, "cp=4", "llama"),
    pytest.param(4, "dp_replicate=2,cp=2", "llama", marks=pytest.mark.slow),    # HSDP x CP, two rows
])
def test_cp_loss_and_grads_equal_cp1(tmp_path, nproc, layout, family):
    res = _torchrun(nproc, "--layout", layout, "--family", family, "--out", str(tmp_path / "r.json"))
    assert res["n_params"] > 0 and res["rows"] == res["data_parallel_size"]
    assert abs(res["loss_cp"] - res["loss_ref"]) <= 1e-5, res
    assert res["max_grad_diff"] <= 1e-5, res
    assert res["max_grad"] > 1e-3, "gradients must be non-trivial for the comparison to mean anything"


# ---------------------------------------------------------------- the trainer (`prism_fast.midtrain --recipe tiny`)
@pytest.fixture(scope="module")
def corpus(tmp_path_factory, hf_tokenizer_dir):
    return [f"--data.cache_dir={tmp_path_factory.mktemp('corpus')}", f"--data.tokenizer={hf_tokenizer_dir}",
            "--train.steps=4", "--checkpoint.interval=2", "--checkpoint.keep_last=0", "--data.val_batches=0"]


@pytest.fixture(scope="module")
def run_cp1(tmp_path_factory, corpus):
    from tests.train import _runs
    d = tmp_path_factory.mktemp("cp1")
    _runs.run(1, [f"--train.run_dir={d}", *corpus])
    return d


@pytest.mark.slow
def test_trainer_cp2_equals_cp1_and_resumes_under_cp1(tmp_path, run_cp1, corpus):
    """2 ranks x cp=2 (same rows, half the tokens each) give the 1-rank losses; its DCP checkpoint (params sharded
    over dp_shard_cp) resumes in a 1-rank cp=1 job with the same losses."""
    from tests.train import _runs
    d2, d1 = tmp_path / "cp2", tmp_path / "resumed"
    _runs.run(2, [f"--train.run_dir={d2}", "--parallel.cp=2", *corpus])
    ref, cp2 = _runs.losses(run_cp1), _runs.losses(d2)
    assert sorted(cp2) == [1, 2, 3, 4]
    for s in ref:
        assert abs(ref[s] - cp2[s]) <= 1e-5, (s, ref[s], cp2[s])
    _runs.run(1, [f"--train.run_dir={d1}", f"--checkpoint.resume={d2 / 'checkpoints' / 'step-2'}", *corpus])
    resumed = _runs.losses(d1)
    assert sorted(resumed) == [3, 4]
    for s in resumed:
        assert abs(ref[s] - resumed[s]) <= 1e-5, (s, ref[s], resumed[s])


@pytest.mark.slow
def test_attention_only_training_freezes_the_rest(tmp_path, run_cp1, corpus):
    """train.trainable=attention: only q/k/v/o move, AdamW keeps state for them only, the export still loads."""
    import torch.distributed.checkpoint as dcp

    from prism_fast.export import main as export_main
    from prism_fast.models import build_model, tiny_config
    from tests.train import _runs
    d = tmp_path / "attn"
    _runs.run(1, [f"--train.run_dir={d}", "--train.trainable=attention", *corpus])
    step = d / "checkpoints" / "step-4"
    torch.manual_seed(0)                                       # the tiny recipe's init (model.init_seed = 0)
    init = build_model(tiny_config("llama", vocab_size=49152, tie_word_embeddings=True))
    init.init_weights()
    init_sd, trained = init.state_dict(), _runs.final_weights(step)
    moved = {k for k in trained if not torch.equal(trained[k], init_sd[k])}
    attention = {k for k in trained if ".self_attn." in k}
    assert moved == attention and len(attention) == 8, sorted(moved ^ attention)
    keys = dcp.FileSystemReader(str(step)).read_metadata().state_dict_metadata
    state_of = {k.split(".", 2)[2].rsplit(".", 1)[0] for k in keys if k.startswith("optim.state.")}
    assert state_of == attention, sorted(state_of ^ attention)
    export_main(["--ckpt", str(step), "--out", str(tmp_path / "hf"), "--dtype", "fp32"])
    assert (tmp_path / "hf" / "config.json").exists()


def _worker(layout: str, family: str, out: str) -> None:
    """One rank: build, shard, forward/backward under CP; rank 0 writes the comparison with cp=1."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from prism_fast.distributed import ParallelConfig, destroy_distributed, init_distributed
    from prism_fast.distributed.context_parallel import ContextParallel
    from prism_fast.models import build_model, tiny_config
    from prism_fast.train.config import ModelSection
    from prism_fast.train.model_init import build_parallel_model

    rank, world, _ = init_distributed("cpu")
    kw = dict(kv.split("=") for kv in layout.split(","))
    pcfg = ParallelConfig(param_dtype="fp32", reduce_dtype="fp32", ac="full", **{k: int(v) for k, v in kw.items()})
    dims = pcfg.build(world)
    section = ModelSection(path="tiny", tiny_type=family, tiny_overrides={"vocab_size": 512}, init_seed=3)
    model, cfg, _ = build_parallel_model(section, pcfg, dims, torch.device("cpu"))
    rows = [_row(96, seed) for seed in range(dims.data_parallel_size)]

    torch.manual_seed(3)                           # the same init as build_parallel_model's (cp=1 reference)
    ref = build_model(cfg, device="cpu")
    ref.init_weights()
    n_ref = sum(int((r["labels"] != -100).sum()) for r in rows)
    loss_ref = sum(ref(r["input_ids"], position_ids=r["position_ids"], cu_seqlens=r["cu_seqlens"],
                       labels=r["labels"], loss_reduction="sum") for r in rows) / n_ref
    loss_ref.backward()

    mb = ContextParallel(dims.cp_mesh(), torch.device("cpu")).shard(rows[dims.data_parallel_rank(rank)])
    n_tok = (mb["labels"] != -100).sum().float()
    dist.all_reduce(n_tok)
    loss = model(mb["input_ids"], position_ids=mb["position_ids"], labels=mb["labels"], loss_reduction="sum",
                 cp=mb["cp"]) * model.loss_scale_for_fsdp / n_tok
    loss.backward()
    loss_cp = loss.detach() / model.loss_scale_for_fsdp
    dist.all_reduce(loss_cp)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    diffs, biggest = [], 0.0
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        name = name.replace("_checkpoint_wrapped_module.", "")
        diffs.append(float((g - ref_grads[name]).abs().max()))
        biggest = max(biggest, float(ref_grads[name].abs().max()))
    if rank == 0:
        Path(out).write_text(json.dumps({
            "loss_cp": float(loss_cp), "loss_ref": float(loss_ref), "max_grad_diff": max(diffs),
            "max_grad": biggest, "n_params": len(diffs), "rows": len(rows),
            "data_parallel_size": dims.data_parallel_size}))
    destroy_distributed()


def _row(T: int, seed: int) -> dict:
    """One packed row (trainer layout) with document boundaries DOCS (shifted per seed) and some masked labels."""
    g = torch.Generator().manual_seed(100 + seed)
    cu = [0] + [min(T, b + seed) for b in DOCS[1:-1]] + [T]
    ids = torch.randint(0, 512, (1, T), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    pos = torch.zeros(1, T, dtype=torch.int64)
    for s, e in zip(cu[:-1], cu[1:]):
        labels[0, e - 1] = -100                              # a document's last token has no target
        pos[0, s:e] = torch.arange(e - s)
    labels[0, torch.randperm(T, generator=g)[:5]] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": pos,
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", required=True)
    ap.add_argument("--family", default="llama")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    _worker(a.layout, a.family, a.out)
