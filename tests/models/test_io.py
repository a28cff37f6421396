"""save_pretrained / from_pretrained: transformers loads our directories with identical logits, sharded
checkpoints with an index, dtype casts, tied heads, bounded peak memory, and clear errors for bad inputs."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from safetensors import safe_open

from prism_fast.models import ModelConfig, build_model, from_pretrained, tiny_config
from prism_fast.models.hf_io import iter_safetensors
from tests.models.hf_twin import assert_close, twin


@pytest.mark.parametrize("family,tied", [("llama", False), ("llama", True), ("mistral", False), ("granite", False)])
def test_save_then_transformers_load_gives_identical_logits(tmp_path, family, tied):
    ours, _ = twin(family, tie_word_embeddings=tied)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__.lower().startswith(family)
    x = torch.randint(0, 256, (2, 31))
    assert_close(ours(x), hf(x).logits, 1e-5, "saved -> transformers")
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) is not tied
    back = from_pretrained(tmp_path)
    assert torch.equal(back(x), ours(x))
    assert back.config.to_dict() == ours.config.to_dict() | {"hf_config": back.config.hf_config}


def test_transformers_save_then_our_load(tmp_path):
    _, hf = twin("granite")
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    x = torch.randint(0, 256, (1, 40))
    assert_close(ours(x), hf(x).logits, 1e-5, "transformers -> ours")


def test_sharded_save_index_and_dtype(tmp_path):
    ours, _ = twin("llama")
    ours.save_pretrained(tmp_path, max_shard_size="100KB", dtype=torch.bfloat16)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, t = next(iter_safetensors(tmp_path / shards[0]))
    assert t.dtype == torch.bfloat16
    bf = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    fp = from_pretrained(tmp_path)                                   # bf16 file -> fp32 model
    assert all(p.dtype == torch.float32 for p in fp.parameters())
    for (n, a), b in zip(ours.state_dict().items(), fp.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), n
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 256, (1, 17))
    assert_close(fp(x), hf(x).logits, 1e-5, "sharded bf16 -> transformers")


@pytest.mark.slow
def test_from_pretrained_peak_memory_is_about_one_model(tmp_path):
    """Peak RSS growth of a fresh process loading a ~220 MB fp32 checkpoint (3 shards) stays near 1x the files."""
    cfg = tiny_config("llama", vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=8, head_dim=128)
    build_model(cfg, device="meta").to_empty(device="cpu").save_pretrained(tmp_path, max_shard_size="100MB")
    size = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    # VmHWM is reset through /proc/self/clear_refs after a warm-up meta build: the first nn.init call on the meta
    # device imports torch._dynamo (~150 MB of modules, once per process), which is not per-model memory.
    code = textwrap.dedent(f"""
        import torch
        from prism_fast.models import build_model, from_pretrained, tiny_config
        build_model(tiny_config("llama"), device="meta")
        def rss(key):
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
        open("/proc/self/clear_refs", "w").write("5")
        base = rss("VmRSS")
        m = from_pretrained({str(tmp_path)!r})
        print(rss("VmHWM") - base, sum(p.numel() * 4 for p in m.parameters()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grew, model_bytes = map(int, out.stdout.split())
    print(f"checkpoint {size / 1e6:.0f} MB, model {model_bytes / 1e6:.0f} MB, peak RSS growth {grew / 1e6:.0f} MB")
    assert model_bytes <= size
    assert grew < 1.25 * size, f"peak RSS grew {grew / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"


def _saved(tmp_path, family="llama", **kw):
    ours, _ = twin(family, **kw)
    ours.save_pretrained(tmp_path)
    return tmp_path


def test_errors_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path)
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path)


def test_errors_unsupported_and_moe():
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'.*supported"):
        ModelConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="mixture-of-experts"):
        ModelConfig.from_hf_dict({"model_type": "mixtral"})
    with pytest.raises(ValueError, match="mixture-of-experts.*num_local_experts=4"):
        tiny_config("llama", num_local_experts=4)
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        build_model(tiny_config("llama", rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ValueError, match="multiple of"):
        tiny_config("llama", num_key_value_heads=3)


def test_errors_mismatched_checkpoint(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"shape mismatch for model.layers.0.mlp.\w+_proj.weight"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="lacks .* parameters.*layers.2"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.1"):
        from_pretrained(tmp_path)


def test_errors_bad_forward_inputs():
    ours, _ = twin("llama")
    x = torch.randint(0, 256, (2, 10))
    with pytest.raises(ValueError, match="batch size 1"):
        ours(x, cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="from 0 to T=10"):
        ours(x[:1], cu_seqlens=torch.tensor([0, 5, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="labels shape"):
        ours(x, labels=x[:, :5])
    with pytest.raises(ValueError, match="integer tensor"):
        ours(x.float())


def test_errors_truncated_shard(tmp_path):
    _saved(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        from_pretrained(tmp_path)
