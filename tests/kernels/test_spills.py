"""No register spills at the launch configurations a Hopper GPU runs: every sm_90 row of kernels/configs.py
(attention forward, dK/dV whole-group and one-head-per-program, dQ, decode), every SSD stage, both causal
conv1d kernels and the fused-loss row kernels, compiled for sm_90a as the JIT specializes them at a launch on
contiguous tensors (tests/aot_util.py), must compile with 0 bytes of spill stores and loads (`ptxas -v`). A
spill moves a tile of the hot loop to local memory (L1 / L2 traffic on every iteration); the table rows were
retuned until none spills (the reason of each change is in configs.py).

Not covered: the fp32 (FMA-path) attention variants the fp32 GPU tests launch at these rows. They are
correctness paths, not hot ones, and each takes 15-90 s to compile on an idle core (218 s measured for one at
load ~9 here): 16 of them do not fit the make-test budget. Each hot kernel costs ~1-25 s of compile + ptxas on a
cold cache, so the module is marked slow.
"""
import pytest

from prism_fast.kernels import configs
from tests.aot_util import (aot_compile, assert_all_compiled, assert_fits_shared_memory, assert_no_spills,
                            format_table, kernel_spec)
from tests.kernels.test_aot import LIMITS, attention_specs, ssd_specs

CONV = "prism_fast.kernels.causal_conv1d"
CONV_SIG = dict(fp32_ptrs=("DW_PART_ptr", "DB_PART_ptr"), int_ptrs=("SEQ_ptr",))
# channels-last x [B, C, T] (the Mamba2 mixer's transposed [B, T, C] view) and seq_idx [B, T]: unit strides
CONV_UNIT = ("X_stride_c", "O_stride_c", "G_stride_c", "DX_stride_c", "S_stride_t")


def conv1d_specs(tgt: str) -> list[dict]:
    """Forward and backward at the largest tiles the launcher picks (C, T >= 64), width 4, bias, seq_idx, SiLU."""
    specs = []
    for kernel, row in (("_causal_conv1d_fwd_kernel", configs.CONV1D_FWD), ("_causal_conv1d_bwd_kernel",
                                                                           configs.CONV1D_BWD)):
        cfg = configs.rows(row, tgt)[-1][1]
        c = dict(WIDTH=4, BLOCK_C=cfg["BLOCK_C"], BLOCK_T=cfg["BLOCK_T"], HAS_BIAS=True, HAS_SEQ=True, SILU=True)
        sig_unit = tuple(n for n in CONV_UNIT if n in _params(kernel))
        specs.append(kernel_spec(CONV, kernel, "*bf16", c, num_warps=cfg["num_warps"], unit=sig_unit, **CONV_SIG))
    return specs


def _params(kernel: str) -> list[str]:
    import importlib
    import inspect
    return list(inspect.signature(getattr(importlib.import_module(CONV), kernel).fn).parameters)


LOSS = "prism_fast.kernels."
LOSS_SIG = dict(int_ptrs=(), fp32_ptrs=("Loss_ptr", "Lse_ptr", "G_ptr", "Logp_ptr", "Ent_ptr", "GLogp_ptr", "GEnt_ptr"),
                floats=("logit_scale", "z_loss", "inv_temperature", "log_v"))


def loss_specs(tgt: str) -> list[dict]:
    """The three fused-loss row kernels (every switch on) at the target's LOSS_ROWS config; the label / token
    pointers are int64 (the launchers pass them as given)."""
    cfg = configs.rows(configs.LOSS_ROWS, tgt)[0][1]
    out = []
    for mod, kernel, sw in (("fused_linear_cross_entropy", "_flce_chunk_kernel", dict(HAS_GRAD=True)),
                            ("fused_linear_logprobs", "_fllp_fwd_kernel", dict(RETURN_ENTROPY=True)),
                            ("fused_linear_logprobs", "_fllp_bwd_kernel", dict(HAS_ENT_GRAD=True))):
        spec = kernel_spec(LOSS + mod, kernel, "*bf16", dict(sw, BLOCK=cfg["BLOCK"]), num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"], **LOSS_SIG)
        spec["signature"].update({n: "*i64" for n in ("Labels_ptr", "Tokens_ptr") if n in spec["signature"]})
        out.append(spec)
    return out


def hot_specs_sm90() -> list[dict]:
    return attention_specs("sm90") + ssd_specs("sm90") + conv1d_specs("sm90") + loss_specs("sm90")


@pytest.mark.slow
def test_sm90_rows_compile_without_spills():
    recs = aot_compile(hot_specs_sm90(), archs=(90,))
    print("\n" + format_table(recs))
    assert_all_compiled(recs)
    assert_fits_shared_memory(recs, LIMITS)
    assert_no_spills(recs)

