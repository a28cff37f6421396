"""Attention backward scheduling (issue 12, section 3): heaviest key blocks first, GQA query heads split over
programs, head dim 256 served (and larger head dims refused at the op with a clear error).

On the old code: the block order test fails (key blocks ran last first = lightest first under causal), the
kv_split tests fail (no such argument: the grid was only Hkv wide, GROUP heads serial in one program).
"""
import pytest
import torch
import triton
import triton.language as tl

from prism_fast.kernels.flash_attn_bwd import kv_split_for, varlen_attn_bwd
from prism_fast.kernels.flash_attn_fwd import (_block_ranges, _find_work, doc_block_cumsum, heavy_last,
                                               varlen_attn_fwd, window_bounds)
from prism_fast.ops import varlen_attention, varlen_attention_ref
from tests.ops.test_varlen_attention import _assert_close, _fwd_bwd, _pack


@triton.jit
def _probe_kernel(CU, CUM, BLK, WORK, n_docs, last_first, window_left, window_right, BLOCK: tl.constexpr):
    """Per work item: the block it gets and how many (other-side) blocks it visits, as the dK/dV kernel sees it."""
    item = tl.program_id(0)
    doc, tok0, seqlen, blk = _find_work(CU, CUM, item, n_docs, last_first)
    if doc < n_docs:
        c0 = blk * BLOCK
        lo, n_pre, n_full, n_post = _block_ranges(c0, tl.minimum(c0 + BLOCK, seqlen), seqlen, window_right,
                                                  window_left, BLOCK)
        tl.store(BLK + item, blk)
        tl.store(WORK + item, n_pre + n_full + n_post)


def _schedule(lens, causal, window=(-1, -1), block=16):
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = int(cu[-1])
    left, right = window_bounds(causal, window, T)
    n = triton.cdiv(T, block) + len(lens)
    blk, work = torch.full((n,), -1, dtype=torch.int32), torch.full((n,), -1, dtype=torch.int32)
    # the dK/dV launcher's order: the opposite of the forward's
    _probe_kernel[(n,)](cu, doc_block_cumsum(cu, block), blk, work, len(lens), 1 - heavy_last(left, right),
                        left, right, BLOCK=block)
    return blk[blk >= 0].tolist(), work[work >= 0].tolist()


def test_dkdv_key_blocks_start_heaviest_first():
    blk, work = _schedule([100, 40], causal=True)
    assert blk == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]          # first key blocks (seen by every later query) first
    assert work == [7, 6, 5, 4, 3, 2, 1, 3, 2, 1]          # query blocks visited: non-increasing per document
    assert heavy_last(*window_bounds(True, (-1, -1), 140)) == 1     # the forward / dQ keep last first
    _, work = _schedule([100], causal=False, window=(0, -1))         # anti-causal: last key blocks heaviest
    assert work == sorted(work, reverse=True)


def test_kv_split_fills_the_gpu():
    assert kv_split_for(8, 16, 8, n_sm=132) == 4           # 16 key blocks x 8 kv heads: 128 programs -> 512
    assert kv_split_for(8, 128, 8, n_sm=132) == 1          # 8k tokens: already 1024 programs, no partials
    assert kv_split_for(6, 4, 2, n_sm=132) == 6            # cannot reach 2 waves: every head its own program
    assert kv_split_for(8, 16, 8, n_sm=0) == 1             # CPU / interpreter


@pytest.mark.parametrize("split,dtype", [(4, torch.float32), (2, torch.float16)])
def test_kv_split_gradients_match_unsplit_and_reference(split, dtype):
    q, k, v, cu = _pack((37, 5, 70), 8, 2, 16, dtype, seed=3)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    out, lse = varlen_attn_fwd(q, k, v, cu, softmax_scale=0.25, causal=True)
    base = varlen_attn_bwd(do, q, k, v, out, lse, cu, softmax_scale=0.25, causal=True, kv_split=1)
    got = varlen_attn_bwd(do, q, k, v, out, lse, cu, softmax_scale=0.25, causal=True, kv_split=split)
    ref = _fwd_bwd(lambda a, b, c: varlen_attention_ref(a, b, c, cu, softmax_scale=0.25), q, k, v, do)[1:]
    tol = 1e-4 if dtype == torch.float32 else 4e-3
    for name, g, b, r in zip(("dq", "dk", "dv"), got, base, ref):
        assert g.dtype == dtype
        _assert_close(name + " vs unsplit", g, b, *((1e-5, 1e-5) if dtype == torch.float32 else (2e-3, 2e-3)))
        _assert_close(name + " vs reference", g, r, tol, tol)
    with pytest.raises(ValueError, match="must divide"):
        varlen_attn_bwd(do, q, k, v, out, lse, cu, softmax_scale=0.25, causal=True, kv_split=3)


def test_head_dim_256_runs_and_larger_is_refused():
    q, k, v, cu = _pack((9, 20), 2, 1, 256, torch.float32, seed=5)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(6))
    got = _fwd_bwd(lambda a, b, c: varlen_attention(a, b, c, cu, backend="triton"), q, k, v, do)
    want = _fwd_bwd(lambda a, b, c: varlen_attention_ref(a, b, c, cu), q, k, v, do)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        _assert_close(name, g, w, 1e-4, 1e-4)
    q, k, v, cu = _pack((4,), 2, 1, 320, torch.float32)
    with pytest.raises(ValueError, match="head dims <= 256"):
        varlen_attention(q, k, v, cu, backend="triton")
