"""Every parameter name of every supported family classifies to a real component (never 'other').

Names come from transformers' own model classes built on the meta device with tiny configs, with and without the
optional biases, so a renamed or new parameter upstream fails here instead of being silently unclassified.
"""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prism_fast.analysis.components import COMPONENTS, classify, groups_of, layer_index

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
FAMILIES = {
    "llama": [{}, {"attention_bias": True, "mlp_bias": True}],
    "mistral": [{}],
    "granite": [{}, {"attention_bias": True, "mlp_bias": True}],
    "granitemoehybrid": [dict(num_local_experts=0, layer_types=["mamba", "attention"], shared_intermediate_size=48,
                              mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1),
                         dict(num_local_experts=0, layer_types=["mamba", "attention"], shared_intermediate_size=48,
                              mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1,
                              attention_bias=True, mamba_proj_bias=True)],
    "nemotron_h": [dict(hybrid_override_pattern="M*-", num_hidden_layers=3, mamba_num_heads=4, mamba_head_dim=16,
                        ssm_state_size=8, n_groups=1),
                   dict(hybrid_override_pattern="M*-", num_hidden_layers=3, mamba_num_heads=4, mamba_head_dim=16,
                        ssm_state_size=8, n_groups=1, attention_bias=True, mlp_bias=True, use_bias=True)],
}


def _hf_names(model_type, extra):
    cfg = AutoConfig.for_model(model_type, **{**BASE, **extra})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type,idx", [(m, i) for m, v in FAMILIES.items() for i in range(len(v))])
def test_every_hf_parameter_is_classified(model_type, idx):
    names = _hf_names(model_type, FAMILIES[model_type][idx])
    if model_type == "nemotron_h":  # checkpoints on disk use "backbone." (transformers renames it on load)
        names.update({k.replace("model.", "backbone.", 1): s for k, s in names.items() if k.startswith("model.")})
    seen = set()
    for name, shape in names.items():
        pieces = classify(name, shape)
        assert all(c in COMPONENTS and c != "other" for c, _, _ in pieces), (name, pieces)
        covered = sum((b - a) if a is not None else shape[0] for _, a, b in pieces)
        assert covered == shape[0], (name, pieces)  # pieces tile the rows exactly
        seen.update(c for c, _, _ in pieces)
        if ".layers." in name:
            assert layer_index(name) == int(name.split(".layers.")[1].split(".")[0])
        else:
            assert layer_index(name) is None
    assert {"embed", "norm", "lm_head"} <= seen
    if model_type in ("granitemoehybrid", "nemotron_h"):
        assert {"mamba_in_proj", "mamba_out_proj", "mamba_conv1d", "mamba_A_dt", "mamba_D", "q", "o"} <= seen
    if model_type != "nemotron_h":
        assert {"q", "k", "v", "o", "gate", "up", "down"} <= seen


def test_prism_models_names_classified():
    models = pytest.importorskip("prism_fast.models")
    for family in models.FAMILIES:
        model = models.build_model(models.tiny_config(family), device="meta")
        for name, p in model.state_dict().items():
            assert classify(name, tuple(p.shape))[0][0] != "other", name


def test_specific_mappings():
    assert classify("model.layers.3.self_attn.v_proj.weight") == [("v", None, None)]
    assert classify("backbone.layers.0.mixer.A_log") == [("mamba_A_dt", None, None)]
    assert classify("model.layers.0.mamba.dt_bias") == [("mamba_A_dt", None, None)]
    assert classify("backbone.layers.2.mixer.up_proj.weight") == [("up", None, None)]
    assert classify("model.layers.1.mamba.norm.weight") == [("norm", None, None)]
    assert classify("model.layers.1.shared_mlp.input_linear.weight", (96, 32)) == [("gate", 0, 48), ("up", 48, 96)]
    assert classify("model.layers.1.shared_mlp.output_linear.weight") == [("down", None, None)]
    assert groups_of("mamba_A_dt") == ["mamba", "all"]
    assert groups_of("norm") == ["all"]


def test_unknown_name_is_an_error_unless_allowed():
    with pytest.raises(ValueError, match="allow_unclassified"):
        classify("model.layers.0.block_sparse_moe.router.layer.weight")
    assert classify("foo.bar", allow_unclassified=True) == [("other", None, None)]
