"""weight_change / update_direction / trajectory on real safetensors and DCP files with known edits."""
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import save_file

from prism_fast.analysis import open_checkpoint, trajectory, update_direction, weight_change
from prism_fast.analysis.engine import compare

SHAPES = {  # odd shapes on purpose; input_linear is a fused [gate; up] matrix
    "model.embed_tokens.weight": (97, 47),
    "model.layers.0.self_attn.q_proj.weight": (47, 47),
    "model.layers.0.self_attn.v_proj.weight": (31, 47),
    "model.layers.0.shared_mlp.input_linear.weight": (2 * 61, 47),
    "model.layers.0.shared_mlp.output_linear.weight": (47, 61),
    "model.layers.1.mamba.A_log": (5,),
    "model.layers.1.mamba.in_proj.weight": (103, 47),
    "model.layers.1.input_layernorm.weight": (47,),
    "model.norm.weight": (47,),
    "lm_head.weight": (97, 47),
}


def _base(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}


def _edit(sd, frac, factor, seed=1):
    """Scale exactly round(frac * numel) elements of every tensor by `factor`; returns (new, n_changed per name)."""
    g = torch.Generator().manual_seed(seed)
    new, counts = {}, {}
    for k, v in sd.items():
        w = v.clone().reshape(-1)
        n = round(frac * w.numel())
        idx = torch.randperm(w.numel(), generator=g)[:n]
        w[idx] = (w[idx].float() * factor).to(v.dtype)
        new[k], counts[k] = w.reshape(v.shape), n
    return new, counts


def _save_sharded(sd, d, n_shards=3):
    d.mkdir(parents=True)
    names = list(sd)
    weight_map = {}
    for i in range(n_shards):
        fn = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k] for k in names[i::n_shards]}
        save_file(part, str(d / fn))
        weight_map.update({k: fn for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def test_known_edit_fraction_exact(tmp_path):
    # 5% of elements (of a 200x100 matrix: exactly 1000) scaled by 1.03 -> 3% relative change each
    sd = {"model.layers.0.self_attn.o_proj.weight": torch.randn(200, 100).abs() + 0.1}
    new, counts = _edit(sd, 0.05, 1.03)
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(new, str(tmp_path / "b.safetensors"))
    r = weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors")["pairs"][0]
    fr = r["component"]["o"]["changed_frac"]
    assert fr["1%"] == 0.05 and fr["2%"] == 0.05 and fr["0.1%"] == 0.05
    assert fr["5%"] == 0.0 and fr["10%"] == 0.0
    w, d = sd["model.layers.0.self_attn.o_proj.weight"].double(), (new["model.layers.0.self_attn.o_proj.weight"]
                                                                  - sd["model.layers.0.self_attn.o_proj.weight"]).double()
    assert r["component"]["o"]["rel_change"] == pytest.approx(float(d.norm() / w.norm()), rel=1e-5)
    assert r["layer"]["0"]["changed_frac"]["1%"] == 0.05


def test_zero_weights_guard(tmp_path):
    old = {"model.layers.0.mamba.D": torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0])}
    new = {"model.layers.0.mamba.D": torch.tensor([0.0, 1e-30, 0.0, 1.0, 2.5])}
    save_file(old, str(tmp_path / "a.safetensors"))
    save_file(new, str(tmp_path / "b.safetensors"))
    r = weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    c = r["pairs"][0]["component"]["mamba_D"]
    assert c["zero_old"] == 3 and c["zero_old_changed"] == 1
    # changed: the zero that moved (infinite relative change) and 2 -> 2.5 (25%): 2 of 5 at every threshold
    assert all(v == pytest.approx(0.4) for v in c["changed_frac"].values())
    assert any("w_old == 0" in rule for rule in r["rules"])  # the guard is stated in the output


def test_bf16_checkpoints(tmp_path):
    sd32 = _base(0)
    new32, counts = _edit(sd32, 0.05, 1.03)
    sd, new = ({k: v.bfloat16() for k, v in x.items()} for x in (sd32, new32))
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(new, str(tmp_path / "b.safetensors"))
    r = weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors")["pairs"][0]
    # direct computation on the bf16 values upcast to fp32
    for name, t in r["tensor"].items():
        o, n = sd[name].float(), new[name].float()
        exp = ((n - o).abs() > 0.01 * o.abs()).sum().item() / o.numel()
        assert t["changed_frac"]["1%"] == pytest.approx(exp, abs=1e-12), name
        assert t["rel_change"] == pytest.approx(((n - o).norm() / o.norm()).item(), rel=1e-4), name
    total = sum(o.numel() for o in sd.values())
    assert r["group"]["all"]["changed_frac"]["2%"] == pytest.approx(sum(counts.values()) / total, abs=0.002)


def test_sharded_unsharded_dcp_chunked_workers_identical(tmp_path):
    import torch.distributed.checkpoint as dcp

    sd = _base(0, torch.bfloat16)
    new, _ = _edit(sd, 0.3, 0.9)
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(new, str(tmp_path / "b.safetensors"))
    _save_sharded(sd, tmp_path / "a_sharded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # trainer-style DCP: model state nested under "model", plus optimizer and step entries that must be ignored
        dcp.save({"model": new, "optimizer": {"state": {"m": torch.zeros(3)}}, "step": 7},
                 checkpoint_id=str(tmp_path / "b_dcp"), no_dist=True)
    assert sorted(open_checkpoint(tmp_path / "b_dcp").names()) == sorted(SHAPES)
    ref = weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    variants = [
        weight_change(tmp_path / "a_sharded", tmp_path / "b.safetensors"),
        weight_change(tmp_path / "a_sharded", tmp_path / "b_dcp"),
        weight_change(tmp_path / "a_sharded", tmp_path / "b_dcp", chunk_elements=100),  # whole DCP tensor, sub-ranges
        weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors", chunk_elements=100),
        weight_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors", workers=2, chunk_elements=500),
    ]
    for v in variants:
        for kind in ("component", "group", "layer", "tensor"):
            for key, s in ref["pairs"][0][kind].items():
                got = v["pairs"][0][kind][key]
                assert got["changed_frac"] == s["changed_frac"], (kind, key)
                assert got["rel_change"] == pytest.approx(s["rel_change"], rel=1e-6), (kind, key)
    # fused gate/up split: each half is its own component
    comp = ref["pairs"][0]["component"]
    assert comp["gate"]["numel"] == comp["up"]["numel"] == 61 * 47


def test_multiple_new_and_per_pair_bases(tmp_path):
    a, b = _base(0), _base(1)
    c, _ = _edit(a, 0.5, 1.5)
    for n, sd in (("a", a), ("b", b), ("c", c)):
        save_file(sd, str(tmp_path / f"{n}.safetensors"))
    p = [tmp_path / f"{n}.safetensors" for n in "abc"]
    r = weight_change(p[0], [p[1], p[2]])
    assert len(r["pairs"]) == 2
    assert r["pairs"][1]["group"]["all"]["changed_frac"]["10%"] == pytest.approx(0.5, abs=1e-3)
    r2 = weight_change([p[0], p[1]], [p[2], p[2]])  # a->c next to b->c
    assert r2["pairs"][0]["group"]["all"] == r["pairs"][1]["group"]["all"]
    assert r2["pairs"][1]["base"].endswith("b.safetensors")
    with pytest.raises(ValueError, match="one base"):
        weight_change([p[0], p[1]], [p[2], p[2], p[2]])


def test_update_direction_matches_direct_cosine(tmp_path):
    a = _base(0)
    g = torch.Generator().manual_seed(5)
    shared = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    b = {k: a[k] + 0.1 * shared[k] + 0.05 * torch.randn(a[k].shape, generator=g) for k in a}
    c = {k: a[k] + 0.1 * shared[k] + 0.05 * torch.randn(a[k].shape, generator=g) for k in a}
    c["model.layers.0.self_attn.q_proj.weight"] = a["model.layers.0.self_attn.q_proj.weight"] - (
        b["model.layers.0.self_attn.q_proj.weight"] - a["model.layers.0.self_attn.q_proj.weight"])  # opposite
    for n, sd in (("a", a), ("b", b), ("c", c)):
        save_file(sd, str(tmp_path / f"{n}.safetensors"))
    r = update_direction(*(tmp_path / f"{n}.safetensors" for n in "abc"), chunk_elements=777)
    db = torch.cat([(b[k] - a[k]).reshape(-1).double() for k in a])
    dc = torch.cat([(c[k] - a[k]).reshape(-1).double() for k in a])
    assert r["group"]["all"]["cosine"] == pytest.approx(float(db @ dc / (db.norm() * dc.norm())), rel=1e-5)
    assert r["component"]["q"]["cosine"] == pytest.approx(-1.0, abs=1e-6)
    assert 0.7 < r["component"]["embed"]["cosine"] < 0.9  # 0.1^2 / (0.1^2 + 0.05^2) = 0.8
    r2 = update_direction(*(tmp_path / f"{n}.safetensors" for n in "abc"), chunk_elements=500, workers=2)
    assert r2["workers"] == 2 and r2["worker_cpu_seconds"] > 0
    for key, v in r["component"].items():
        assert r2["component"][key]["cosine"] == pytest.approx(v["cosine"], rel=1e-5, abs=1e-7), key


def test_trajectory_front_loading(tmp_path):
    a = _base(0)
    g = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    # change reaches 0.5, 0.85, 0.95, 1.0 of its final size at steps 20, 40, 60, 80
    for step, f in ((0, 0.0), (20, 0.5), (40, 0.85), (60, 0.95), (80, 1.0)):
        d = tmp_path / "run" / f"step-{step}"
        d.mkdir(parents=True)
        save_file({k: a[k] + 0.01 * f * direction[k] for k in a}, str(d / "model.safetensors"))
    r = trajectory(tmp_path / "run")
    assert r["steps"] == [0, 20, 40, 60, 80]
    s = r["series"]["all"]
    assert s["front_step_rel"] == 40
    final = s["rel_change"][-1]
    assert [x / final for x in s["rel_change"]] == pytest.approx([0, 0.5, 0.85, 0.95, 1.0], rel=1e-5)
    assert r["series"]["q"]["front_step_rel"] == 40
    assert math.isclose(s["changed_frac"][0], 0.0)


def test_mismatched_names_and_shapes_are_reported(tmp_path):
    a = _base(0)
    b = dict(a)
    b.pop("lm_head.weight")  # tied embeddings: not saved
    b["model.norm.weight"] = torch.ones(48)
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    res = compare([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], [(0, 1)])
    assert any("lm_head.weight" in v for k, v in res.skipped.items() if k.startswith("missing_in"))
    assert any("model.norm.weight" in v for v in res.skipped["shape_mismatch"])
    assert "model.norm.weight" not in {p.name for p in res.pieces}


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint"):
        weight_change(tmp_path, tmp_path)


def test_chained_pairs_share_no_buffers(tmp_path):
    # pairs (a->b), (b->c): b is read as "new" then as "base"; pooled buffers must not alias
    a = _base(0)
    b, _ = _edit(a, 0.2, 1.5, seed=1)
    c, _ = _edit(b, 0.4, 0.5, seed=2)
    for n, sd in (("a", a), ("b", b), ("c", c)):
        save_file({k: v.bfloat16() for k, v in sd.items()}, str(tmp_path / f"{n}.safetensors"))
    p = [tmp_path / f"{n}.safetensors" for n in "abc"]
    res = compare(p, [(0, 1), (1, 2)], chunk_elements=300)
    sep = [compare([p[0], p[1]], [(0, 1)], chunk_elements=300), compare([p[1], p[2]], [(0, 1)], chunk_elements=300)]
    assert (res.stats[:, 0] == sep[0].stats[:, 0]).all() and (res.stats[:, 1] == sep[1].stats[:, 0]).all()


def test_truncated_file_is_an_error(tmp_path):
    save_file({"model.norm.weight": torch.ones(1000)}, str(tmp_path / "a.safetensors"))
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        open_checkpoint(tmp_path / "b.safetensors").read("model.norm.weight")
    got = open_checkpoint(tmp_path / "a.safetensors").read("model.norm.weight", 10, 20)
    assert got.shape == (10,) and (got == 1).all()
