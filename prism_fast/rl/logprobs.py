"""Trainer-side log-probs of sampled responses: sequences packed into rows, one fused LM-head pass per row.

A sequence is prompt + response. Packed row of a micro-batch: the sequences' tokens minus their last one,
concatenated ([1, L], documents separated by cu_seqlens so nothing attends across sequences); targets are the next
tokens. The log-prob of response token t of a sequence is read at the position before it. The model computes it
with `model(input_ids, cu_seqlens=..., logprobs_of=targets, temperature=T, return_entropy=...)`, i.e. through
`ops.fused_linear_logprobs`: [L, V] logits are never materialized (chunks of rows only), in forward or backward.

Per-token data of the rollout batch lives in flat "response order" tensors [R] (sequence 0's response tokens, then
sequence 1's, ...). `MicroBatch.resp_pos` [R_mb] says where in the row each response token's log-prob is, and
`MicroBatch.resp_idx` [R_mb] where that token is in the flat [R] order, so values move between the two by indexing.
Sequences are never split across micro-batches (sequence-level loss variants need whole sequences).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MicroBatch:
    input_ids: torch.Tensor      # [1, L] int64
    targets: torch.Tensor        # [1, L] int64 (the next token; the last position of each sequence: its own token)
    cu_seqlens: torch.Tensor     # [n_seq + 1] int32
    resp_pos: torch.Tensor       # [R_mb] int64, positions in the row
    resp_idx: torch.Tensor       # [R_mb] int64, indices into the flat response order
    seq_ids: torch.Tensor        # [R_mb] int64, local sequence index (0..n_seq-1) of each response token
    num_tokens: int              # L


def pack(prompts: list[list[int]], responses: list[list[int]], max_tokens: int) -> list[MicroBatch]:
    """Greedy in-order packing of whole sequences into rows of <= max_tokens (a longer sequence gets a row alone)."""
    if len(prompts) != len(responses):
        raise ValueError("pack: one response per prompt")
    offsets, o = [], 0
    for r in responses:
        offsets.append(o)
        o += len(r)
    groups, cur, cur_len = [], [], 0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r) - 1
        if cur and cur_len + n > max_tokens:
            groups.append(cur)
            cur, cur_len = [], 0
        cur.append(i)
        cur_len += n
    if cur:
        groups.append(cur)
    return [_make_micro([prompts[i] for i in g], [responses[i] for i in g], [offsets[i] for i in g]) for g in groups]


def _make_micro(prompts, responses, offsets) -> MicroBatch:
    ids, tgt, cu, pos, idx, sid = [], [], [0], [], [], []
    for k, (p, r, off) in enumerate(zip(prompts, responses, offsets)):
        if not r:
            raise ValueError("pack: empty response (the engine always returns >= 1 token)")
        seq = list(p) + list(r)
        start = cu[-1]
        ids.extend(seq[:-1])
        tgt.extend(seq[1:])
        cu.append(start + len(seq) - 1)
        first = start + len(p) - 1                 # position whose next token is response token 0
        pos.extend(range(first, first + len(r)))
        idx.extend(range(off, off + len(r)))
        sid.extend([k] * len(r))
    L = len(ids)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return MicroBatch(as_long(ids)[None], as_long(tgt)[None], torch.tensor(cu, dtype=torch.int32), as_long(pos),
                      as_long(idx), as_long(sid), L)


def micro_logprobs(model, mb: MicroBatch, *, temperature: float, entropy: bool, device):
    """(logp [R_mb] fp32, entropy [R_mb] fp32 or None) of this micro-batch's response tokens (grad if enabled)."""
    # cu_seqlens stays on the host: the model validates it there without a device sync
    # positions: the LM head runs on the response positions only (prompt positions' log-probs are never used)
    out = model(mb.input_ids.to(device), cu_seqlens=mb.cu_seqlens, logprobs_of=mb.targets.to(device),
                temperature=temperature, return_entropy=entropy, positions=mb.resp_pos.to(device))
    return out if entropy else (out, None)


@torch.no_grad()
def batch_logprobs(model, micro: list[MicroBatch], num_resp_tokens: int, *, temperature: float, device,
                   num_micro: int | None = None) -> torch.Tensor:
    """Log-probs [R] (flat response order) of every micro-batch under `model`, no grad. `num_micro` > len(micro)
    runs empty forwards (one padding token) so every rank makes the same number of FSDP collectives."""
    out = torch.zeros(num_resp_tokens, dtype=torch.float32, device=device)
    for mb in micro:
        lp, _ = micro_logprobs(model, mb, temperature=temperature, entropy=False, device=device)
        out[mb.resp_idx.to(device)] = lp
    for _ in range((num_micro or len(micro)) - len(micro)):
        dummy_forward(model, device, temperature)
    return out


def dummy_forward(model, device, temperature: float, pad_id: int = 0) -> torch.Tensor:
    """A one-token forward whose output is the 0-d sum of its log-prob times 0: the same FSDP all-gathers (and,
    through backward, reduce-scatters) as a real micro-batch, for ranks with fewer micro-batches than others."""
    t = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    return model(t, logprobs_of=t, temperature=temperature).sum() * 0.0


def logprobs_ref(model, prompts: list[list[int]], responses: list[list[int]], *,
                 temperature: float) -> list[torch.Tensor]:
    """Unpacked reference: one full forward per sequence, log_softmax of the full [T, V] logits / temperature."""
    out = []
    for p, r in zip(prompts, responses):
        seq = torch.tensor([list(p) + list(r)], dtype=torch.long)
        logits = model(seq[:, :-1]).float()[0] / temperature
        lp = torch.log_softmax(logits, -1).gather(-1, seq[0, 1:, None])[:, 0]
        out.append(lp[len(p) - 1:])
    return out
