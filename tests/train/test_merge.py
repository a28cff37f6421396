"""`python -m prism_fast.merge`: W = w * A + (1 - w) * B, streamed tensor by tensor, sharded output loads in
transformers; mismatched checkpoints are rejected."""
import json

import pytest
import torch
from safetensors.torch import load_file

from prism_fast.merge import main as merge_main, merge
from prism_fast.models import build_model, tiny_config


def _saved(tmp_path, name, seed, **over):
    torch.manual_seed(seed)
    m = build_model(tiny_config("llama", **over))
    m.init_weights()
    d = tmp_path / name
    m.save_pretrained(d)
    return d, {k: v.clone() for k, v in m.state_dict().items()}


def _load_dir(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_merge_math_sharding_and_transformers(tmp_path):
    a, sa = _saved(tmp_path, "a", 0)
    b, sb = _saved(tmp_path, "b", 1)
    out = merge(a, b, tmp_path / "m", 0.15, max_shard_bytes=40_000)   # force several shards + index
    merged = _load_dir(out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    idx = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(idx) == set(merged) == set(_load_dir(a))
    for k, t in merged.items():
        want = (0.15 * sa[k].float() + 0.85 * sb[k].float()).to(t.dtype)
        assert torch.equal(t, want), k
    assert json.loads((out / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 200, 3, 7, 11]])
    ours = build_model(tiny_config("llama"))
    ours.load_state_dict(merged)
    torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)


def test_merge_endpoints_cli_and_errors(tmp_path):
    a, sa = _saved(tmp_path, "a", 0)
    b, sb = _saved(tmp_path, "b", 1)
    merge_main(["--a", str(a), "--b", str(b), "--weight", "1.0", "--out", str(tmp_path / "only_a"), "--dtype", "bf16"])
    ma = _load_dir(tmp_path / "only_a")
    assert all(torch.equal(ma[k], sa[k].to(torch.bfloat16)) for k in ma)
    assert json.loads((tmp_path / "only_a" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    mb = _load_dir(merge(a, b, tmp_path / "only_b", 0.0))
    assert all(torch.equal(mb[k], sb[k]) for k in mb)
    c, _ = _saved(tmp_path, "c", 2, intermediate_size=96)
    with pytest.raises(ValueError, match="shape .* in A vs .* in B"):
        merge(a, c, tmp_path / "bad", 0.5)
    d, _ = _saved(tmp_path, "d", 2, num_hidden_layers=3)
    with pytest.raises(ValueError, match="different tensor names"):
        merge(a, d, tmp_path / "bad2", 0.5)
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        merge(a, b, tmp_path / "bad3", 1.5)
    with pytest.raises(ValueError, match="neither model.safetensors"):
        merge(tmp_path, b, tmp_path / "bad4", 0.5)
