"""Ahead-of-time compile of the fused-loss Triton kernels for sm_90 (H100/H200) and sm_80 (A100), on CPU.

Covers every kernel with the launch configuration its launcher picks for each architecture (kernels/configs.py
LOSS_ROWS: the V tile BLOCK, num_warps, num_stages) in bf16 (the GPU training dtype) with its HAS_*/RETURN_*
switches on, plus the CE kernel in fp32 without gradients.
"""
from prism_fast.kernels import fused_linear_cross_entropy as kce
from prism_fast.kernels import fused_linear_logprobs as klp
from prism_fast.kernels.configs import LOSS_ROWS, SHARED_MEM_LIMIT, rows
from tests.aot_util import aot_compile, assert_all_compiled, assert_fits_shared_memory


def _spec(mod, kernel, args: str, dtype, switches: dict, cfg: dict):
    """args: 'name:type' pairs, comma separated; 'L' stands for the logits pointer type `*dtype`."""
    sig = dict(a.split(":") for a in args.replace(" ", "").split(","))
    sig = {k: (f"*{dtype}" if t == "L" else t) for k, t in sig.items()}
    sig.update({k: "constexpr" for k in [*switches, "BLOCK"]})
    return {"module": mod.__name__, "kernel": kernel, "signature": sig,
            "constexprs": {**switches, "BLOCK": cfg["BLOCK"]}, "num_warps": cfg["num_warps"],
            "num_stages": cfg["num_stages"]}


def _ce_spec(dtype, has_grad, cfg):
    return _spec(kce, "_flce_chunk_kernel", "Logits_ptr:L, Logits_stride:i32, Labels_ptr:*i64, Loss_ptr:*fp32, "
                 "Lse_ptr:*fp32, G_ptr:*fp32, G_stride:i32, V:i32, ignore_index:i32, logit_scale:fp32, "
                 "z_loss:fp32", dtype, {"HAS_GRAD": has_grad}, cfg)


def _lp_fwd_spec(dtype, ent, cfg):
    return _spec(klp, "_fllp_fwd_kernel", "Logits_ptr:L, Logits_stride:i32, Tokens_ptr:*i64, Logp_ptr:*fp32, "
                 "Ent_ptr:*fp32, Lse_ptr:*fp32, V:i32, inv_temperature:fp32, log_v:fp32", dtype,
                 {"RETURN_ENTROPY": ent}, cfg)


def _lp_bwd_spec(dtype, ent, cfg):
    return _spec(klp, "_fllp_bwd_kernel", "Logits_ptr:L, Logits_stride:i32, Tokens_ptr:*i64, Lse_ptr:*fp32, "
                 "Ent_ptr:*fp32, GLogp_ptr:*fp32, GEnt_ptr:*fp32, V:i32, inv_temperature:fp32", dtype,
                 {"HAS_ENT_GRAD": ent}, cfg)


def test_fused_loss_kernels_compile_for_hopper_and_ampere():
    # bf16 with every switch on compiles the largest code path of each kernel; one fp32 no-grad variant checks
    # the other dtype and the switch-off branch (each compile costs ~1-2 s of the CPU test budget). Each
    # architecture is compiled with its own LOSS_ROWS config, as the launcher would pick it there.
    records = []
    for arch, tgt in ((90, "sm90"), (80, "sm80")):
        for _, cfg in rows(LOSS_ROWS, tgt):
            specs = [_ce_spec("bf16", True, cfg), _ce_spec("fp32", False, cfg), _lp_fwd_spec("bf16", True, cfg),
                     _lp_bwd_spec("bf16", True, cfg)]
            got = aot_compile(specs, archs=(arch,))
            assert len(got) == len(specs)
            records += got
    assert_all_compiled(records)
    assert_fits_shared_memory(records, {90: SHARED_MEM_LIMIT["sm90"], 80: SHARED_MEM_LIMIT["sm80"]})
    for r in records:
        assert r["cubin_bytes"] > 0


def test_launch_config_caps_the_tile_at_the_vocab():
    import torch
    cfg = kce.row_launch_config(torch.device("cpu"), 97)
    assert cfg["BLOCK"] == 128 and cfg["num_warps"] >= 1
    assert kce.row_launch_config(torch.device("cpu"), 49152)["BLOCK"] == rows(LOSS_ROWS, "interp")[0][1]["BLOCK"]
