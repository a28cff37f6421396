"""Ahead-of-time compiles of the attention, decode and SSD kernels for sm_90 (H100 / H200) and sm_80 (A100), on
CPU: every row of kernels/configs.py for its architecture (so the configs a GPU run will use are known to build),
checked against the architecture's shared-memory limit (ptxas accepts more than a block may use: an over-sized
tile would only fail at launch), with the int64 index math of the SSD kernels and the explicit dot precisions.

Every case compiles in a child process without the interpreter (tests/aot_util.py); ~2-4 s per kernel and
architecture on a cold Triton cache, so the whole file is marked slow.
"""
import pytest

from prism_fast.kernels import configs
from tests.aot_util import (aot_compile, assert_all_compiled, assert_fits_shared_memory, kernel_signature,
                            kernel_spec)

ARCH = {90: "sm90", 80: "sm80"}
LIMITS = {a: configs.SHARED_MEM_LIMIT[t] for a, t in ARCH.items()}
FWD, BWD, DEC = ("prism_fast.kernels." + m for m in ("flash_attn_fwd", "flash_attn_bwd", "decode_attention"))
ATTN_SIG = dict(is_ptr=str.isupper, fp32_ptrs=("LSE", "DELTA", "PO", "PLSE"), int_ptrs=("CU", "CUM", "SEQLENS", "BT"),
                floats=("qk_scale2", "sm_scale"))


def _opts(cfg):
    return dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def attention_specs(tgt: str, lowp: bool = True) -> list[dict]:
    """fwd / dK/dV (whole group and split 1 head per program) / dQ / decode for every table row of `tgt`, at the
    row's largest head dim with GQA 4, plus the delta, block-cumsum and decode-combine kernels."""
    ptr = "*bf16" if lowp else "*fp32"
    specs = []
    for dim, cfg in configs.rows(configs.ATTN_FWD, tgt):
        c = dict(GROUP=4, HEAD_DIM=dim, BLOCK_D=dim, DOT_LOWP=lowp, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
        specs.append(kernel_spec(FWD, "_varlen_attn_fwd_kernel", ptr, c, **_opts(cfg), **ATTN_SIG))
    for dim, cfg in configs.rows(configs.ATTN_BWD_DKDV, tgt):
        for heads in ((4, 1) if dim == 128 else (4,)):          # 1 head per program: the kv_split layout
            c = dict(GROUP=4, HEADS=heads, HEAD_DIM=dim, BLOCK_D=dim, DOT_LOWP=lowp, BLOCK_M=cfg["BLOCK_M"],
                     BLOCK_N=cfg["BLOCK_N"])
            specs.append(kernel_spec(BWD, "_varlen_attn_bwd_dkdv_kernel", ptr, c, **_opts(cfg), **ATTN_SIG))
    for dim, cfg in configs.rows(configs.ATTN_BWD_DQ, tgt):
        c = dict(GROUP=4, HEAD_DIM=dim, BLOCK_D=dim, DOT_LOWP=lowp, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
        specs.append(kernel_spec(BWD, "_varlen_attn_bwd_dq_kernel", ptr, c, **_opts(cfg), **ATTN_SIG))
    for dim, cfg in configs.rows(configs.DECODE, tgt):
        for paged in ((False, True) if dim == 128 else (False,)):
            c = dict(GROUP=4, HEAD_DIM=dim, BLOCK_H=16, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=dim, PAGED=paged,
                     PAGE_SIZE=256 if paged else 1, DOT_LOWP=lowp)
            specs.append(kernel_spec(DEC, "_decode_attn_fwd_kernel", ptr, c, **_opts(cfg), **ATTN_SIG))
    specs.append(kernel_spec(DEC, "_decode_attn_combine_kernel", ptr, dict(HEAD_DIM=128, BLOCK_S=16, BLOCK_D=128),
                             **ATTN_SIG))
    specs.append(kernel_spec(BWD, "_varlen_attn_bwd_preprocess_kernel", ptr,
                             dict(HEAD_DIM=128, BLOCK_M=64, BLOCK_D=128), **ATTN_SIG))
    specs.append(kernel_spec(FWD, "_doc_block_cumsum_kernel", "*i32", dict(BLOCK=128, CHUNK=1024), **ATTN_SIG))
    return specs


_SSD_FP32 = ("DT_OUT_ptr", "DA_CS_ptr", "CB_ptr", "DCB_ptr", "STATES_ptr", "S_IN_ptr", "DS_OUT_ptr", "DSTATES_ptr",
             "SV_ptr", "DDA_LAST_ptr", "DDT_DIRECT_ptr", "DA_PART_ptr", "DDT_BIAS_PART_ptr", "DD_PART_ptr",
             "DDA_PART_ptr", "INIT_ptr", "FINAL_ptr", "DFINAL_ptr", "DINIT_ptr", "DDT_ptr", "A_ptr", "DT_BIAS_ptr",
             "D_ptr", "INTER_ptr", "CROSS_ptr", "CROSS_PART_ptr")
SSD_SIG = dict(fp32_ptrs=_SSD_FP32, int_ptrs=("SEG_ptr",), floats=("dt_min", "dt_max"))


def ssd_specs(tgt: str, L: int = 256, P: int = 64, N: int = 128, lowp: bool = True, jit: bool = True) -> list[dict]:
    """Every SSD stage with the launchers' tiles for chunk L, head dim P, state N (Granite-4.0-H / Nemotron-H);
    jit=False: without the launch-time specialization (kernel_spec)."""
    m = "prism_fast.kernels."
    dot = dict(DOT_MODE=1 if lowp else 0)
    b64 = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, HAS_SEQ=True, **dot)
    dt = dict(L=L, BLOCK_H=8192 // L, HAS_DT_BIAS=True, DT_SOFTPLUS=True, HAS_LIMIT=True)
    table = [
        ("ssd_chunk_cumsum", "_ssd_chunk_cumsum_fwd_kernel", dt),
        ("ssd_chunk_cumsum", "_ssd_chunk_cumsum_bwd_kernel", dt),
        ("ssd_bmm", "_ssd_bmm_fwd_kernel", dict(L=L, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, **dot)),
        ("ssd_bmm", "_ssd_bmm_bwd_dcb_kernel", dict(L=L, **b64)),
        ("ssd_chunk_state", "_ssd_chunk_state_fwd_kernel", dict(L=L, **b64)),
        ("ssd_chunk_state", "_ssd_chunk_state_bwd_db_kernel", dict(L=L, **b64)),
        ("ssd_state_passing", "_ssd_state_passing_fwd_kernel", dict(L=L, BLOCK=1024, HAS_INIT=True, HAS_SEQ=True)),
        ("ssd_state_passing", "_ssd_state_passing_bwd_kernel", dict(L=L, BLOCK=1024, HAS_DFINAL=True, HAS_SEQ=True)),
        ("ssd_chunk_scan", "_ssd_chunk_scan_fwd_kernel", dict(L=L, **b64, HAS_D=True, D_HAS_HDIM=False, HAS_Z=True)),
        ("ssd_chunk_scan", "_ssd_gate_bwd_kernel", dict(BLOCK_T=64, BLOCK_P=P)),
        ("ssd_chunk_scan", "_ssd_chunk_scan_bwd_dstates_kernel", dict(L=L, **b64)),
        ("ssd_chunk_scan", "_ssd_chunk_scan_bwd_dc_kernel", dict(L=L, **b64)),
        ("ssd_combined", "_ssd_chunk_scan_chunk_state_bwd_dx_kernel",
         dict(L=L, BLOCK_M=64, BLOCK_P=P, BLOCK_K=64, BLOCK_N=64, HAS_SEQ=True, HAS_D=True, D_HAS_HDIM=False, **dot)),
        ("ssd_ddA", "_ssd_bwd_ddA_kernel", dict(L=L, BLOCK_M=64, BLOCK_J=64, BLOCK_K=64, BLOCK_N=64, HAS_SEQ=True,
                                                **dot)),
    ]
    opts = _opts(configs.rows(configs.SSD, tgt)[0][1])
    cumsum = _opts(configs.rows(configs.SSD_CUMSUM, tgt)[0][1])
    return [kernel_spec(m + mod, k, "*bf16" if lowp else "*fp32", c, **(cumsum if "cumsum" in k else opts),
                        unit=ssd_unit_strides(m + mod, k, c) if jit else (), jit=jit, **SSD_SIG)
            for mod, k, c in table]


def ssd_unit_strides(module: str, kernel: str, constexprs: dict) -> tuple:
    """The strides the SSD launchers pass as 1 on contiguous inputs, so the JIT turns them into constants: the
    innermost dim of x / z / y / dy / dx [.., H, P] (P), of B / C / states [.., N] (N), and of dt [B, T, H] (H)."""
    inner = ("X_stride_p", "Z_stride_p", "Y_stride_p", "O_stride_p", "DY_stride_p", "DX_stride_p", "DO_stride_p",
             "B_stride_n", "C_stride_n", "DB_stride_n", "DC_stride_n", "S_stride_n", "DT_stride_h", "DDT_stride_h")
    sig = kernel_signature(module, kernel, "*bf16", constexprs, **SSD_SIG)
    return tuple(n for n in inner if n in sig)


def _check(specs_by_arch):
    recs = [r for arch, specs in specs_by_arch.items() for r in aot_compile(specs, archs=(arch,))]
    assert_all_compiled(recs)
    assert_fits_shared_memory(recs, LIMITS)
    assert len(recs) == sum(len(s) for s in specs_by_arch.values())
    return recs


@pytest.mark.slow
def test_attention_and_decode_configs_compile_and_fit_sm90_sm80():
    """Includes the head-dim-256 rows (64 x 32 forward tiles: 64 KiB of shared memory on sm_90)."""
    _check({a: attention_specs(t) for a, t in ARCH.items()})


@pytest.mark.slow
def test_ssd_kernels_compile_sm90_sm80():
    """All 14 SSD stages, bf16 dots, chunk 256, for both architectures; the chunk-dependent scan, dx and dA
    stages also with fp32 (IEEE) dots at chunk 64 for sm_90."""
    fp32 = [s for s in ssd_specs("sm90", L=64, lowp=False)
            if s["kernel"] in ("_ssd_chunk_scan_fwd_kernel", "_ssd_chunk_scan_chunk_state_bwd_dx_kernel",
                               "_ssd_bwd_ddA_kernel")]
    _check({90: ssd_specs("sm90") + fp32, 80: ssd_specs("sm80")})
