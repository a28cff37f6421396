"""Row-chunking helpers shared by the fused LM-head ops (fused_linear_cross_entropy, fused_linear_logprobs).

Both ops walk the N rows of hidden [N, D] in chunks of C rows, compute one logits chunk [C, V] with a GEMM, turn
it into per-row statistics (and dlogits), and feed dlogits into two more GEMMs:
    dH[rows] = dlogits @ W          (each row lives in exactly one chunk: no cross-chunk accumulation)
    dW      += dlogits.T @ h_c      (accumulated across chunks in fp32, cast to W's dtype once at the end)
Only one chunk of logits ever exists, so peak extra memory is ~ C * V * bytes_per_elem + the fp32 dW buffer.
"""
from __future__ import annotations

import sys

import torch

# Memory budget for the per-chunk [C, V] temporaries.
#   torch backend: works in place on one fp32 [C, V] buffer (the GEMM output itself when fp32; a fp32 copy of
#     the 16-bit GEMM output otherwise), the entropy path adds one fp32 temporary -> budget 8 B per logit.
#     256 MiB at V = 49152 gives C = 640 rows (13 chunks at N = 8192).
#   triton backend: only the GEMM output in the compute dtype (2 B for bf16); the Triton kernel rewrites it in
#     place with dlogits. 512 MiB at V = 128256 gives C = 2048 rows: M = 2048 keeps the three GEMMs large
#     enough for cuBLAS to run near peak, and the 16 chunks of N = 32k rows add only 16 x 3 GEMM launches.
#   Compared with unfused bf16 logits + their fp32 upcast at N = 32k, V = 128k (8.4 + 16.8 GB, more in
#   backward), the fused peak is dominated by the fp32 dW buffer (V * D * 4 B = 2.1 GB at D = 4096).
TORCH_CHUNK_BYTES = 256 << 20
TORCH_BYTES_PER_LOGIT = 8
TRITON_CHUNK_BYTES = 512 << 20
MAX_CHUNK_ROWS = 32768


def chunk_rows(n: int, v: int, bytes_per_logit: int, budget: int, chunk_size: int | None = None) -> int:
    """Rows per chunk: `chunk_size` if given, else as many as fit `budget` (multiple of 128 when >= 128)."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return min(chunk_size, max(n, 1))
    c = budget // max(1, v * bytes_per_logit)
    c = (c // 128) * 128 if c >= 128 else max(16, c)
    return max(1, min(c, MAX_CHUNK_ROWS, max(n, 1)))


_OUT_DTYPE_OK: dict[tuple, bool] = {}


def _addmm_out_dtype_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once per (device, dtype) whether addmm(out_dtype=fp32, out=acc) accumulates bf16/fp16 GEMMs in fp32.

    torch >= 2.8 has it on CUDA (cuBLASLt C/D in fp32 with 16-bit A/B); older torch or other devices raise.
    Uses a private generator so that the user's RNG stream is not consumed.
    """
    key = (device.type, device.index, dtype)
    if key not in _OUT_DTYPE_OK:
        ok = False
        try:
            gen = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(64, 48, device=device, generator=gen).to(dtype)
            b = torch.randn(48, 32, device=device, generator=gen).to(dtype)
            acc = torch.randn(64, 32, device=device, generator=gen)
            want = acc + a.float() @ b.float()
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            ok = bool(torch.allclose(acc, want, atol=1e-2, rtol=1e-2))
        except (RuntimeError, TypeError, NotImplementedError):
            ok = False
        _OUT_DTYPE_OK[key] = ok
    return _OUT_DTYPE_OK[key]


def addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc [M, K] fp32 += a [M, C] @ b [C, K]; a and b share a dtype (the compute dtype)."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif a.is_cuda and _addmm_out_dtype_works(a.device, a.dtype):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        # Fallback: one [M, K] temporary in the compute dtype per chunk (fp32 accumulation inside the GEMM,
        # one rounding to bf16/fp16 per chunk, fp32 accumulation across chunks).
        acc.add_(a @ b)


def plain_weight(weight: torch.Tensor, op: str) -> torch.Tensor:
    """Reject an FSDP2-sharded (DTensor) weight with the fix in the message. Without torch.distributed.tensor
    imported no tensor can be a DTensor, so the check does not import it (that import pulls in ~900 modules,
    ~150 MiB of RSS, into a process that does not use it)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(weight, dtensor.DTensor):
        raise ValueError(
            f"{op}: weight is a DTensor (an FSDP2-sharded lm_head/embedding parameter). Call the op inside the "
            "model's forward, where the root FSDP unit has all-gathered it into a plain tensor "
            "(docs/fused_loss.md), or pass weight.full_tensor().")
    return weight


def flatten_rows(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, op: str, ids_name: str):
    """Validate shapes; hidden [..., D] -> [N, D], ids [...] -> [N] contiguous int64."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: expected hidden [N, D] and weight [V, D], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if tuple(ids.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{op}: {ids_name} must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, "
                         f"got {tuple(ids.shape)}")
    return hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1).long().contiguous()
