"""Prefill: write fresh prompts into cache rows ("slots") and return each prompt's last-position logits.

`prefill_packed` runs ALL prompts as one packed row (cu_seqlens), the training forward's layout: no padding enters
attention or Mamba state, and the GEMMs see every prompt token at once. The blocks are the model's own; only the
per-layer cache objects are stand-ins that write what decoding needs into the slots:
  * attention (`_PackedKVWriter.attend`): scatter each document's k/v to (slot, position) of the KV cache, then
    varlen attention over the pack (prompts start empty, so attending to the pack is attending to the cache);
  * Mamba2 (`_PackedMambaWriter.write_packed`, called by Mamba2Mixer when it sees a cache together with seq_idx):
    per document, the conv history (its last W-1 raw inputs, zero-padded) and the final SSM state
        S_d = sum_{t in d} exp(sum_{s in d, s > t} dt_s A) dt_t x_t (outer) B_t      [H, P, N], fp32,
    which the packed scan does not return (it returns the last document's state only).
Shared prefix (`prefix=P`, attention-only models): prompts that start with the same P tokens (a chat template's
system prompt, the same question under several instructions) compute those tokens ONCE: the prefix is prefilled
into the first slot, its KV rows are copied to the other slots, and the pack then holds only the suffixes, at
positions P.., each attending to the shared prefix plus its own causal past (`prefix_varlen_attention`). Mamba
state after a prefix would have to be branched per slot mid-scan, so hybrids always prefill whole prompts.
`prefill_rows` is the reference: one batch-1 forward per prompt on a row view of the cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prism_fast.models.cache import KVCache, ModelCache
from prism_fast.ops import varlen_attention


def prefill_rows(model, cache: ModelCache, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
    """Reference prefill, one prompt at a time into cache.row(slot). Returns last-position logits [n, V]."""
    device = cache.seqlens.device
    cache.clear_rows(torch.tensor(slots, device=device))
    last = []
    for p, s in zip(prompts, slots):
        h = model.forward_hidden(torch.tensor([p], dtype=torch.long, device=device), cache=cache.row(s))
        last.append(h[0, -1])
    return model.logits(torch.stack(last)[None])[0]


def shared_prefix_len(prompts: list[list[int]], min_len: int = 8) -> int:
    """Longest common token prefix of >= 2 prompts, capped so that every prompt keeps at least one token of its
    own (its last position's logits are needed); 0 when that is shorter than `min_len` (not worth a forward)."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
        if n < min_len:
            return 0
    return n


def prefix_varlen_attention(q, k, v, prefix_k, prefix_v, cu_seqlens: list[int], *, softmax_scale,
                            window_size=(-1, -1)) -> torch.Tensor:
    """Packed documents that all continue one shared prefix. q [T, H, Dh], k/v [T, Hkv, Dh] (the documents'
    own tokens, boundaries `cu_seqlens` host ints), prefix_k/v [P, Hkv, Dh] -> [T, H, Dh]. Token i of a document
    sits at absolute position P + i and sees the whole prefix and its document's tokens 0..i (minus what a left
    window hides). One SDPA per document over [prefix; document] keys with that mask (enable_gqa: no copies)."""
    P = prefix_k.shape[0]
    pk, pv = prefix_k.to(q.dtype), prefix_v.to(q.dtype)             # the cache's dtype -> the compute dtype, once
    gqa = k.shape[1] != q.shape[1]
    outs = []
    for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        L = b - a
        kd = torch.cat([pk, k[a:b]]).transpose(0, 1)[None].contiguous()              # [1, Hkv, P + L, Dh]
        vd = torch.cat([pv, v[a:b]]).transpose(0, 1)[None].contiguous()
        i = torch.arange(L, device=q.device)[:, None] + P                                  # query positions
        j = torch.arange(P + L, device=q.device)[None, :]
        mask = j <= i
        if window_size[0] >= 0:
            mask &= j >= i - window_size[0]
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], kd, vd, attn_mask=mask,
                                           scale=softmax_scale, enable_gqa=gqa)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


class _PackedKVWriter:
    """Stands in for a KVCache during a packed prefill (see module docstring). slot/pos [T] int64 per token
    (pos counts from 0 at the start of the prompt, so with a shared prefix of P tokens it starts at P)."""

    def __init__(self, kv: KVCache, slot_T, pos_T, cu_seqlens, max_seqlen, attn_backend, prefix=0, prefix_slot=0,
                 cu_host=None):
        self.kv, self.slot_T, self.pos_T, self.cu, self.max_seqlen = kv, slot_T, pos_T, cu_seqlens, max_seqlen
        self.attn_backend = attn_backend
        self.prefix, self.prefix_slot, self.cu_host = prefix, prefix_slot, cu_host

    def attend(self, q, k, v, offsets, *, softmax_scale, window_size=(-1, -1), backend=None):
        """q [1, T, H, Dh], k/v [1, T, Hkv, Dh] -> [1, T, H, Dh]. `offsets` is unused (the writer knows the
        positions); `backend` is the decode backend the layer passes, not used: this is varlen attention."""
        self.kv.k[self.slot_T, self.pos_T] = k[0].to(self.kv.k.dtype)
        self.kv.v[self.slot_T, self.pos_T] = v[0].to(self.kv.v.dtype)
        if self.prefix:
            P, s = self.prefix, self.prefix_slot
            o = prefix_varlen_attention(q[0], k[0], v[0], self.kv.k[s, :P], self.kv.v[s, :P], self.cu_host,
                                        softmax_scale=softmax_scale, window_size=window_size)
        else:
            o = varlen_attention(q[0], k[0], v[0], self.cu, self.max_seqlen, causal=True,
                                 softmax_scale=softmax_scale, window_size=window_size, backend=self.attn_backend)
        return o[None]


class _PackedMambaWriter:
    """Stands in for a MambaCache during a packed prefill: Mamba2Mixer hands it the pack's conv inputs/outputs."""

    def __init__(self, mc, slots, bounds):
        self.mc, self.slots, self.bounds = mc, slots, bounds        # slots [n] int64; bounds: [(start, end)] * n

    def write_packed(self, mixer, xBC_BCT, conv_BCT, dt_BTH) -> None:
        """xBC [1, C, T] conv inputs, conv [1, C, T] conv outputs (activation applied), dt [1, T, H] raw."""
        dev = xBC_BCT.device
        hist = mixer.conv_width - 1
        starts = torch.tensor([a for a, _ in self.bounds], device=dev)
        ends = torch.tensor([b for _, b in self.bounds], device=dev)
        idx = ends[:, None] - hist + torch.arange(hist, device=dev)                       # [n, W-1]
        taken = xBC_BCT[0][:, idx.clamp(min=0)].permute(1, 0, 2)                          # [n, C, W-1]
        self.mc.conv_state[self.slots] = taken.masked_fill(~(idx >= starts[:, None])[:, None], 0).to(
            self.mc.conv_state.dtype)

        H, P, G, N, I = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.d_state, mixer.intermediate_size
        dt = F.softplus(dt_BTH[0].float() + mixer.dt_bias.float()).clamp(*mixer.time_step_limit)    # [T, H]
        A = -torch.exp(mixer.A_log.float())
        x_TC = conv_BCT[0].transpose(0, 1)
        xs, Bm = x_TC[:, :I].float().reshape(-1, H, P), x_TC[:, I:I + G * N].float().reshape(-1, G, N)
        Bh = Bm.repeat_interleave(H // G, dim=1)                                          # [T, H, N]
        states = []
        for a, b in self.bounds:
            dA = (dt[a:b] * A).double()                                                   # [L, H]
            after = dA.flip(0).cumsum(0).flip(0) - dA                                     # sum over s > t
            w = torch.exp(after).float() * dt[a:b]
            states.append(torch.einsum("lh,lhp,lhn->hpn", w, xs[a:b], Bh[a:b]))
        self.mc.ssm_state[self.slots] = torch.stack(states).to(self.mc.ssm_state.dtype)


class _PackedCache:
    """What ctx.cache looks like to the blocks during a packed prefill: .layers[i] (writers) and .seqlens."""

    def __init__(self, layers, seqlens):
        self.layers, self.seqlens = layers, seqlens


def kv_only(cache: ModelCache) -> bool:
    """True when every stateful layer is attention (KV): the models whose prefill can share a prefix."""
    return all(c is None or isinstance(c, KVCache) for c in cache.layers)


def prefill_packed(model, cache: ModelCache, prompts: list[list[int]], slots: list[int], *,
                   prefix: int = 0) -> torch.Tensor:
    """Prefill every prompt in one packed forward into its slot. Returns last-position logits [n, V].
    prefix=P > 0: the prompts share their first P tokens (see module docstring); attention-only models."""
    device = cache.seqlens.device
    if prefix:
        if not kv_only(cache):
            raise ValueError("prefill_packed: a shared prefix needs an attention-only model (Mamba state cannot be "
                             "branched mid-prompt); pass prefix=0")
        if any(len(p) <= prefix or p[:prefix] != prompts[0][:prefix] for p in prompts):
            raise ValueError(f"prefill_packed: every prompt must start with the same {prefix} tokens and have more")
        prefill_packed(model, cache, [prompts[0][:prefix]], slots[:1])              # the prefix, once
        if len(slots) > 1:
            cache.copy_row(slots[0], torch.tensor(slots[1:], device=device))
        prompts = [p[prefix:] for p in prompts]
    lens = [len(p) for p in prompts]
    T = sum(lens)
    if T == 1 and not prefix:   # one 1-token prompt: the blocks would take their decode path, which is this anyway
        return prefill_rows(model, cache, prompts, slots)
    cu_list = [0]
    for n in lens:
        cu_list.append(cu_list[-1] + n)
    bounds = list(zip(cu_list[:-1], cu_list[1:]))
    cu = torch.tensor(cu_list, dtype=torch.int32, device=device)
    slots_t = torch.tensor(slots, dtype=torch.long, device=device)
    lens_t = torch.tensor(lens, device=device)
    slot_T = torch.repeat_interleave(slots_t, lens_t, output_size=T)
    pos_T = torch.arange(T, device=device) - torch.repeat_interleave(cu[:-1].long(), lens_t, output_size=T) + prefix
    if not prefix:
        cache.clear_rows(slots_t)
    writers = []
    attn_backend = getattr(getattr(model, "kernels", None), "attention", "auto")
    for c in cache.layers:
        if c is None:
            writers.append(None)
        elif isinstance(c, KVCache):
            writers.append(_PackedKVWriter(c, slot_T, pos_T, cu, max(lens), attn_backend, prefix, slots[0], cu_list))
        else:
            writers.append(_PackedMambaWriter(c, slots_t, bounds))
    ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=device)
    # forward_hidden's body with the writers as the cache (make_context rejects cache + cu_seqlens by design)
    x = model.embed(ids)
    ctx = model.make_context(ids, position_ids=pos_T[None] if prefix else None, cu_seqlens=cu, dtype=x.dtype)
    ctx.cache = _PackedCache(writers, cache.seqlens)
    for blk in model.blocks:
        x = blk(x, ctx)
    h = model.final_norm_module()(x[:, cu[1:].long() - 1])                            # [1, n, D] last positions
    cache.seqlens[slots_t] = lens_t + prefix
    return model.logits(h)[0]
