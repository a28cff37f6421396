"""Kernel dispatch decided once at build (ops/kernel_choice.py): resolution, build-time errors, what the blocks
hold, the config tree section, FP8 routing of the projections, and the hybrid chunk size being an implementation
choice."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prism_fast import ops
from prism_fast.distributed.fp8 import apply_fp8, fp8_flop_share, mixed_peak_flops
from prism_fast.models import build_model, tiny_config
from prism_fast.models.layers import Attention, MLP, is_fp8_linear, register_fp8_linear
from prism_fast.models.mamba2 import Mamba2Mixer, ssd_kernel_chunk_size
from prism_fast.ops.kernel_choice import KernelConfig, kernel_fields, replace_kernels, resolve_kernels
from prism_fast.train.config import JobConfig, apply_overrides, save_json


def test_auto_resolves_to_concrete_names_per_target():
    cpu = resolve_kernels(device="cpu", dtype=torch.float32)
    assert all(getattr(cpu, f) != "auto" for f in kernel_fields())
    assert (cpu.attention, cpu.ssd, cpu.conv1d, cpu.loss, cpu.logprobs, cpu.projection) == (
        "torch", "torch", "torch", "torch", "torch", "fused")
    assert resolve_kernels(device="cpu", compile=True).loss == "inductor"       # compiled CPU runs
    assert resolve_kernels(device="cpu", fp8=True).projection == "separate"     # FP8: one TE module call each
    assert resolve_kernels({"loss": "torch"}, device="cpu", compile=True).loss == "torch"   # explicit wins


def test_invalid_choices_fail_at_build_listing_what_is_usable():
    with pytest.raises(ValueError, match=r"kernels.attention='flash_attn' cannot run on cpu .*usable here: "
                                         r"\['triton', 'torch'\]"):
        resolve_kernels({"attention": "flash_attn"}, device="cpu")
    with pytest.raises(ValueError, match="interpreter runs fp32/fp16 only"):
        build_model(tiny_config("llama"), dtype=torch.bfloat16, kernels={"attention": "triton"})
    with pytest.raises(ValueError, match=r"kernels.loss='cutlass' is not a backend of loss; use auto or one of"):
        KernelConfig(loss="cutlass")
    with pytest.raises(ValueError, match="projection='fused' cannot run .*FP8 is on"):
        resolve_kernels({"projection": "fused"}, device="cpu", fp8=True)
    with pytest.raises(ValueError, match="meta device runs no kernels"):
        resolve_kernels(device="meta")


class _OpLog(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher (custom ops included)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_blocks_hold_the_resolved_names_and_forward_uses_them():
    """build_model(..., kernels=...) hands the names to every block; a forward then runs exactly those kernels
    (the Triton varlen attention is the custom op prism::varlen_attention_fwd: count its calls)."""
    cfg = tiny_config("llama", num_hidden_layers=2)
    model = build_model(cfg, kernels={"attention": "triton", "projection": "separate"})
    assert model.kernels.attention == "triton" and model.kernels.loss == "torch"
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert attn and all(m.attn_backend == "triton" and m.projection == "separate" for m in attn)
    assert all(m.projection == "separate" for m in model.modules() if isinstance(m, MLP))
    with _OpLog() as log:
        model(torch.randint(0, cfg.vocab_size, (2, 9)))
    calls = [n for n in log.names if n.startswith("prism.varlen_attention_fwd")]
    assert len(calls) == 2                                        # one per attention layer
    with pytest.raises(ValueError, match="kernels were chosen for cpu but the input is on meta"):
        model(torch.zeros(1, 4, dtype=torch.long, device="meta"))


def test_moving_the_model_resolves_the_same_request_for_the_new_target():
    """.half() / .to() re-resolve at the move; an explicit choice that cannot run on the new target fails there."""
    model = build_model(tiny_config("llama"), kernels={"attention": "triton"})
    assert (model.kernels.dtype, model.kernels.attention) == ("float32", "triton")
    model.half()
    assert (model.kernels.dtype, model.kernels.attention) == ("float16", "triton")
    with pytest.raises(ValueError, match="interpreter runs fp32/fp16 only"):
        model.to(torch.bfloat16)
    auto = build_model(tiny_config("llama")).to(torch.bfloat16)
    assert auto.kernels.dtype == "bfloat16" and auto.kernels.attention == "torch"


def test_config_tree_section_and_saved_resolved_names(tmp_path):
    cfg = apply_overrides(JobConfig(), ["--kernels.loss=torch", "--kernels.attention", "auto"])
    assert cfg.kernels.loss == "torch" and cfg.kernels.attention == "auto"
    with pytest.raises(ValueError, match="not a backend of ssd"):
        apply_overrides(JobConfig(), ["--kernels.ssd=cuda"])
    choice = resolve_kernels(cfg.kernels, device="cpu", compile=True)
    save_json(replace_kernels(cfg, choice), tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())["kernels"]
    assert saved == {f: getattr(choice, f) for f in kernel_fields()} and "auto" not in saved.values()
    assert "loss=torch" in choice.describe() and "attention=torch" in choice.describe()


# ---- FP8: every block linear through the FP8 module type -------------------------------------------------------

@register_fp8_linear
class _RegisteredFP8Linear(nn.Linear):
    """A registered FP8-capable linear type for the routing test (the swap code path is apply_fp8's own; only the
    module it builds differs from te.Linear, which needs CUDA + Transformer Engine)."""


def _make(child: nn.Linear) -> nn.Module:
    new = _RegisteredFP8Linear(child.in_features, child.out_features, bias=child.bias is not None)
    return new.to(child.weight.dtype)


@pytest.mark.parametrize("model_type", ["llama", "nemotron_h"])
def test_fp8_swap_routes_every_block_projection_through_the_fp8_modules(model_type):
    torch.manual_seed(0)
    cfg = tiny_config(model_type)
    ref = build_model(cfg)
    ref.init_weights()
    model = build_model(cfg)
    model.load_state_dict(ref.state_dict())
    block_linears = {name: m for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}
    # FP8 GEMMs need both dims divisible by 16; the others stay plain bf16 linears (and are counted as such)
    fp8_able = {n for n, m in block_linears.items() if m.in_features % 16 == 0 and m.out_features % 16 == 0}
    n = apply_fp8(model, make_linear=_make)
    assert n == len(fp8_able) > 0
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    with pytest.raises(RuntimeError, match="call model.configure_kernels"):   # fused GEMM would bypass them
        model(ids)
    assert model.configure_kernels().projection == "separate"               # FP8 detected from the modules
    ran: dict[str, str] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: ran.__setitem__(name, type(mod).__name__))
             for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)]
    out = model(ids)
    for h in hooks:
        h.remove()
    assert set(ran) == set(block_linears)                                      # q/k/v, gate/up, in_proj, ...
    assert {k for k, t in ran.items() if t == "_RegisteredFP8Linear"} == fp8_able
    assert {t for k, t in ran.items() if k not in fp8_able} <= {"Linear"}
    assert any(k.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")) for k in fp8_able)
    torch.testing.assert_close(out, ref(ids), atol=1e-5, rtol=1e-5)           # same weights, same math
    assert all(is_fp8_linear(m) == (name in fp8_able) for name, m in model.blocks.named_modules()
               if name in block_linears)
    # MFU counts what really ran: the FP8 share is the swapped linears' 6 * params over the model's FLOPs
    share = fp8_flop_share(model, 64)
    n_fp8 = sum(m.weight.numel() for m in model.modules() if is_fp8_linear(m))
    assert share == pytest.approx(6 * n_fp8 / model.flops_per_token(64)) and 0 < share < 1
    assert mixed_peak_flops(100.0, share) == pytest.approx(100.0 / (share / 2 + 1 - share))
    assert mixed_peak_flops(100.0, 0.0) == 100.0 and mixed_peak_flops(100.0, 1.0) == 200.0


def test_apply_fp8_refuses_an_unregistered_type():
    with pytest.raises(TypeError, match="not a registered FP8 linear type"):
        apply_fp8(build_model(tiny_config("llama")), make_linear=lambda c: nn.Linear(c.in_features, c.out_features))


# ---- hybrid chunk size: an implementation choice ------------------------------------------------------------------

def test_kernel_chunk_size_maps_any_positive_chunk_to_a_valid_one():
    assert [ssd_kernel_chunk_size(c) for c in (1, 8, 16, 17, 100, 128, 256, 1000)] == [16, 16, 16, 32, 128, 128,
                                                                                      256, 256]
    with pytest.raises(ValueError, match="positive"):
        ssd_kernel_chunk_size(0)


@pytest.mark.parametrize("model_type,key,triton", [
    ("nemotron_h", "chunk_size", False), ("granitemoehybrid", "mamba_chunk_size", False),
    pytest.param("nemotron_h", "chunk_size", True, marks=pytest.mark.slow)])      # the interpreter: ~20 s
def test_hybrid_loads_chunk_size_8_and_results_do_not_depend_on_the_chunk(model_type, key, triton, tmp_path):
    """A config with chunk_size=8 (transformers accepts it) builds, runs a packed forward + backward and saves it
    back; outputs and gradients equal those of kernel chunks 32 and 256 (fp32, torch backend; Triton at 16 too)."""
    from prism_fast.models import from_pretrained
    torch.manual_seed(0)
    cfg = tiny_config(model_type, **{key: 8})
    assert cfg.mamba_chunk_size == 8
    ids = torch.randint(0, cfg.vocab_size, (1, 45))
    cu = torch.tensor([0, 20, 21, 45], dtype=torch.int32)
    base = build_model(cfg)
    base.init_weights(0.1)
    base.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[key] == 8
    results = []
    cases = [(None, "torch"), (32, "torch"), (256, "torch")]
    if triton:
        cases.append((None, "triton"))
    for chunk, ssd in cases:
        model = from_pretrained(tmp_path, kernels={"ssd": ssd})
        if chunk is not None:
            for m in model.modules():
                if isinstance(m, Mamba2Mixer):
                    m.kernel_chunk_size = chunk
        loss = model(ids, cu_seqlens=cu, labels=torch.roll(ids, -1, 1))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=1e-5)
        for n, g in grads.items():
            torch.testing.assert_close(g, results[0][1][n], atol=1e-4, rtol=1e-4, msg=n)


def test_kernel_config_fields_match_the_choice():
    assert [f.name for f in dataclasses.fields(KernelConfig)] == kernel_fields()
    assert ops.KernelChoice is type(resolve_kernels())
