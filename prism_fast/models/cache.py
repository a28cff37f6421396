"""Inference cache: per-layer state (contiguous KV for attention; the hybrid families add Mamba conv/SSM state).

How families plug in: a block whose mixer needs state implements `new_cache(batch_size, max_seq_len, dtype, device)
-> LayerCache | None`; subclass `LayerCache` as a dataclass whose tensor fields all have the batch first (e.g.
MambaCache(conv_state [B, C, W-1], ssm_state [B, H, P, N])), and the generic `row(b)` works unchanged. A block
reads its state as `ctx.cache.layers[self.layer_idx]` and updates it in place.
`ModelCache.seqlens` [B] int64 counts the tokens already in the cache per sequence; the model forward advances it
after all layers ran, so every layer of one forward sees the same offsets. Sequences may have different lengths
(batched generation): KV writes go to each row's own offset.
Unusual: `row(b)` returns a cache of VIEWS on row b, so a batch-1 forward on it (per-prompt prefill of prompts
with different lengths) writes straight into the batched cache; no copy back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prism_fast.ops import decode_attention


@dataclass
class LayerCache:
    """Base class of per-layer state. Subclasses are dataclasses whose tensor fields have the batch first."""

    def row(self, b: int) -> "LayerCache":
        """Views on batch row b (shape [1, ...]); in-place updates reach this cache."""
        return self.rows(b, b + 1)

    def rows(self, start: int, stop: int) -> "LayerCache":
        """Views on batch rows [start, stop) (contiguous along the batch, so no copy); in-place updates reach this
        cache. The rollout engine decodes on the prefix of slots that hold live sequences."""
        return dataclasses.replace(self, **{f.name: t[start:stop] for f, t in self._tensors()})

    def copy_rows(self, src: int, dst: torch.Tensor, length: int) -> None:
        """Copy row src's state to rows dst [n] int64 (n samples sharing one prefill); `length` = tokens cached."""
        for _, t in self._tensors():
            t[dst] = t[src:src + 1].clone()             # clone: source and destination share the tensor

    def zero_rows(self, idx: torch.Tensor) -> None:
        """Zero the state of rows idx [n] (a fresh sequence: empty conv history, zero SSM state)."""
        for _, t in self._tensors():
            t[idx] = 0

    def _tensors(self):
        return [(f, getattr(self, f.name)) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)]


@dataclass
class KVCache(LayerCache):
    """Contiguous keys and values: k, v [B, S, Hkv, Dh] (S = capacity). Entries j < seqlens[b] are valid."""
    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, batch_size, max_seq_len, num_kv_heads, head_dim, *, dtype, device) -> "KVCache":
        shape = (batch_size, max_seq_len, num_kv_heads, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def copy_rows(self, src: int, dst: torch.Tensor, length: int) -> None:
        """Only the first `length` positions are valid, so only they are copied."""
        self.k[dst, :length] = self.k[src:src + 1, :length].clone()
        self.v[dst, :length] = self.v[src:src + 1, :length].clone()

    def zero_rows(self, idx: torch.Tensor) -> None:
        """Nothing to do: entries past a row's seqlens are never read as valid (they are overwritten first)."""

    def attend(self, q, k, v, offsets, *, softmax_scale, window_size=(-1, -1), backend="auto"):
        """Append k, v and attend. q [B, T, H, Dh], k/v [B, T, Hkv, Dh], offsets [B] int64 (tokens already cached).

        T == 1 goes through prism_fast.ops.decode_attention (where fast kernels plug in). T > 1 (prefill, chunked
        prefill) is a masked SDPA over the first max(offsets) + T cache rows. Returns [B, T, H, Dh]."""
        B, T, H, Dh = q.shape
        pos = offsets[:, None] + torch.arange(T, device=q.device)                        # [B, T] absolute positions
        rows = torch.arange(B, device=q.device)[:, None]
        self.k[rows, pos] = k.to(self.k.dtype)
        self.v[rows, pos] = v.to(self.v.dtype)
        if T == 1:
            o = decode_attention(q[:, 0], self.k, self.v, offsets + 1, softmax_scale=softmax_scale,
                                 window_size=window_size, backend=backend)
            return o[:, None]
        L = int(pos.max()) + 1                                                            # host sync
        Hkv = self.k.shape[2]
        rep = H // Hkv
        kk = self.k[:, :L].transpose(1, 2).to(q.dtype)                                    # [B, Hkv, L, Dh]
        vv = self.v[:, :L].transpose(1, 2).to(q.dtype)
        j = torch.arange(L, device=q.device)
        visible = j[None, None, :] <= pos[:, :, None]                                     # [B, T, L]
        if window_size[0] >= 0:
            visible &= j[None, None, :] >= pos[:, :, None] - window_size[0]
        # GQA without copying the cache: the rep query heads of one kv head become rep * T query rows
        q_BGRT = q.view(B, T, Hkv, rep, Dh).permute(0, 2, 3, 1, 4).reshape(B, Hkv, rep * T, Dh)
        mask = visible[:, None, None].expand(B, 1, rep, T, L).reshape(B, 1, rep * T, L)
        o = F.scaled_dot_product_attention(q_BGRT, kk, vv, attn_mask=mask, scale=softmax_scale)
        return o.view(B, Hkv, rep, T, Dh).permute(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


class ModelCache:
    """All layers' state plus per-sequence lengths. layers[i] is None for stateless layers (MLP-only)."""

    def __init__(self, layers: list[LayerCache | None], seqlens: torch.Tensor, max_seq_len: int):
        self.layers = layers
        self.seqlens = seqlens                         # [B] int64
        self.max_seq_len = max_seq_len

    @property
    def batch_size(self) -> int:
        return self.seqlens.shape[0]

    def row(self, b: int) -> "ModelCache":
        """Batch-1 cache of views on sequence b (see module docstring)."""
        return ModelCache([None if c is None else c.row(b) for c in self.layers], self.seqlens[b:b + 1],
                          self.max_seq_len)

    def rows(self, start: int, stop: int) -> "ModelCache":
        """Cache of views on sequences [start, stop) (no copy; the engine's decode runs on the live prefix)."""
        return ModelCache([None if c is None else c.rows(start, stop) for c in self.layers],
                          self.seqlens[start:stop], self.max_seq_len)

    def copy_row(self, src: int, dst: torch.Tensor) -> None:
        """Make sequences dst [n] int64 copies of sequence src (state and length): n samples, one prefill."""
        length = int(self.seqlens[src])                                                   # host sync
        for c in self.layers:
            if c is not None:
                c.copy_rows(src, dst, length)
        self.seqlens[dst] = length

    def clear_rows(self, idx: torch.Tensor) -> None:
        """Empty sequences idx [n] int64 (length 0, zero recurrent state) before a new prompt goes there."""
        for c in self.layers:
            if c is not None:
                c.zero_rows(idx)
        self.seqlens[idx] = 0

    def advance(self, n: int) -> None:
        """Record that n more tokens were appended to every sequence (in place, so row views follow)."""
        self.seqlens += n

    def reset(self) -> None:
        """Forget everything (KV entries are simply overwritten; stateful layers must zero their state)."""
        self.seqlens.zero_()
        for c in self.layers:
            if c is not None and not isinstance(c, KVCache):
                for f in dataclasses.fields(c):
                    t = getattr(c, f.name)
                    if isinstance(t, torch.Tensor):
                        t.zero_()
