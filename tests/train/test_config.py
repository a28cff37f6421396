"""Config tree: CLI overrides, validation errors that name the fix, recipes (Table 16), optimizer groups."""
import json

import pytest
import torch

from prism_fast.distributed import ParallelDims
from prism_fast.recipes import PAPER_RECIPES, RECIPES, get_recipe
from prism_fast.train.config import JobConfig, apply_overrides, to_dict
from prism_fast.train.optim import param_groups


def test_overrides_types_and_atomic_validation():
    cfg = apply_overrides(get_recipe("tiny")(), [
        "--optim.lr=1e-4", "--optim.betas=[0.8,0.9]", "--optim.fused=false", "--metrics.peak_tflops=none",
        "--train.steps", "12", "--model.tiny_overrides={\"num_hidden_layers\": 3}", "--parallel.ac=every",
        # mixture=custom needs sources: both in one command line must validate together
        "--data.mixture=custom", '--data.sources=[{"path": "x", "weight": 1}]'])
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9) and cfg.optim.fused is False
    assert cfg.train.steps == 12 and cfg.model.tiny_overrides == {"num_hidden_layers": 3}
    assert cfg.metrics.peak_tflops is None and cfg.parallel.ac == "every" and cfg.data.mixture == "custom"
    assert json.loads(json.dumps(to_dict(cfg)))["optim"]["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("args, msg", [
    (["--optim.lrr=1"], "unknown field 'lrr'; valid: lr, weight_decay"),
    (["--optimizer.lr=1"], "unknown section 'optimizer'; valid: model, data, train"),
    (["--optim=1"], "is a section"),
    (["--train.steps=ten"], "expected int"),
    (["--optim.fused=maybe"], "expected a boolean"),
    (["--parallel.ac=sometimes"], "use one of"),
    (["--schedule.warmup_steps=50"], "must be < train.steps"),
    (["--data.mixture=custom"], "data.sources must be given"),
    (["train.steps=3"], "overrides look like --section.field=value"),
])
def test_override_errors(args, msg):
    with pytest.raises(ValueError, match=msg.replace("(", "\\(").replace("|", "\\|")):
        apply_overrides(get_recipe("tiny")(), args)


def test_validate_batch_mesh_and_files(tmp_path):
    cfg = get_recipe("tiny")()
    assert cfg.validate(1) == 4 and cfg.validate(2) == 2
    with pytest.raises(ValueError, match="global_batch_size=4 is not a multiple.*use e.g. --train.global_batch_size=3"):
        cfg.validate(3)
    with pytest.raises(ValueError, match="dp_replicate \\(2\\) x parallel.dp_shard \\(3\\) must equal the world size"):
        ParallelDims(dp_replicate=2, dp_shard=3, world_size=4)
    with pytest.raises(ValueError, match="not divisible by parallel.dp_replicate"):
        ParallelDims(dp_replicate=3, world_size=4)
    assert ParallelDims(dp_replicate=2, world_size=4).dp_shard == 2
    rec = get_recipe("llama_3_1_8b")()
    with pytest.raises(ValueError, match="huggingface-cli download meta-llama/Llama-3.1-8B --local-dir"):
        rec.validate(128)
    with pytest.raises(ValueError, match="unknown recipe 'gpt5'; available: demo, tiny"):
        get_recipe("gpt5")


def _fake_paper_files(tmp_path):
    from prism_fast.data.presets import percentages
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name in percentages("mcs"):
        (tmp_path / "data" / name).mkdir(parents=True)
    return str(model), str(tmp_path / "data")


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_table16(name, tmp_path):
    assert len(PAPER_RECIPES) == 7 and set(PAPER_RECIPES) < set(RECIPES)
    model, data = _fake_paper_files(tmp_path)
    cfg: JobConfig = get_recipe(name)(model_path=model, data_root=data)
    o, s, t, d, p = cfg.optim, cfg.schedule, cfg.train, cfg.data, cfg.parallel
    assert (o.lr, o.weight_decay, o.betas, o.eps) == (5e-5, 0.1, (0.9, 0.95), 1e-10)
    assert (s.name, s.warmup_steps, s.min_lr_ratio, t.steps) == ("cosine", 500, 0.1, 25_000)
    assert d.seq_len * t.global_batch_size == 1_048_576 and d.mixture == "mcs"           # ~1.05M tokens/step
    assert d.seq_len * t.global_batch_size * t.steps == 26_214_400_000                   # 26.21B tokens
    assert (p.dp_replicate, p.dp_shard, p.param_dtype, p.reduce_dtype) == (16, 8, "bf16", "fp32")
    assert cfg.validate(128) == 1
    with pytest.raises(ValueError, match="laid out for 128 ranks"):
        cfg.validate(8)
    cfg_nodata = get_recipe(name)(model_path=model, data_root=str(tmp_path / "nodata"))
    with pytest.raises(ValueError, match="missing: dclm_edu, chat"):
        cfg_nodata.validate(128)


def test_param_groups_decay_matrices_only():
    from prism_fast.models import build_model, tiny_config
    model = build_model(tiny_config("llama", attention_bias=True))
    groups, names = param_groups(model, 0.1)
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 0.1, "no_decay": 0.0}
    assert all(n.endswith("weight") and "norm" not in n for n in names["decay"])
    assert any("layernorm" in n for n in names["no_decay"]) and any(n.endswith("bias") for n in names["no_decay"])
    assert "model.embed_tokens.weight" in names["decay"]
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    _, names2 = param_groups(model, 0.1, no_decay_embeddings=True)
    assert "model.embed_tokens.weight" in names2["no_decay"] and "lm_head.weight" in names2["no_decay"]
    assert torch.is_tensor(groups[0]["params"][0])
