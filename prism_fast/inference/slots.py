"""Device-side state of the decode batch: one row ("slot") per live completion, all per-row tensors on the device.

Why this shape: the decode step (`SlotBatch.step`) is a fixed-shape, sync-free function of device tensors (the
last token, the per-row sampling parameters, RNG keys and counters, stop-token ids, done flags), so the host
only looks at the done flags every `sync_every` steps and the step can be captured as a CUDA graph for a given
number of rows. Rows that are done (or empty) still run, on garbage, until the host refills them; their cache
length is reset to 0 each step so they never overflow. Generated tokens and log-probs accumulate in [slots,
max_new] device buffers that the host reads when a completion finishes.
Decoding runs on the prefix of rows [0, hi) that holds live completions (`ModelCache.rows` is a view), and new
completions take the lowest free slots, so a draining batch shrinks instead of computing dead rows.
"""
from __future__ import annotations

import torch

from prism_fast.inference.params import SamplingParams
from prism_fast.inference.sampler import sample_tokens, uniforms


class SlotBatch:
    """Per-slot device tensors for `num_slots` rows of a ModelCache. `max_new` = longest answer any row may get."""

    def __init__(self, model, cache, num_slots: int, max_new: int, max_stop_ids: int, device):
        self.model, self.cache = model, cache
        n, dev = num_slots, device
        self.last_tok = torch.zeros(n, dtype=torch.long, device=dev)
        self.n_gen = torch.zeros(n, dtype=torch.long, device=dev)          # tokens generated = the RNG counter
        self.max_new = torch.ones(n, dtype=torch.long, device=dev)
        self.done = torch.ones(n, dtype=torch.bool, device=dev)             # empty slots count as done
        self.temperature = torch.ones(n, dtype=torch.float32, device=dev)
        self.top_k = torch.zeros(n, dtype=torch.long, device=dev)
        self.top_p = torch.ones(n, dtype=torch.float32, device=dev)
        self.min_p = torch.zeros(n, dtype=torch.float32, device=dev)
        self.keys = torch.zeros(n, 2, dtype=torch.long, device=dev)
        self.stop_ids = torch.full((n, max(1, max_stop_ids)), -1, dtype=torch.long, device=dev)
        self.out_tok = torch.zeros(n, max_new, dtype=torch.long, device=dev)
        self.out_lp = torch.zeros(n, max_new, dtype=torch.float32, device=dev)
        self.device = dev

    def assign(self, slots: list[int], params: list[SamplingParams], keys: list[tuple[int, int]],
               stop_ids: list[list[int]]) -> torch.Tensor:
        """Load the sampling parameters of new completions into `slots`; returns the slots as a device tensor."""
        dev = self.device
        s = torch.tensor(slots, dtype=torch.long, device=dev)
        self.temperature[s] = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
        self.top_k[s] = torch.tensor([p.top_k for p in params], dtype=torch.long, device=dev)
        self.top_p[s] = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev)
        self.min_p[s] = torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev)
        self.max_new[s] = torch.tensor([p.max_new_tokens for p in params], dtype=torch.long, device=dev)
        self.keys[s] = torch.tensor(keys, dtype=torch.long, device=dev)
        width = self.stop_ids.shape[1]
        self.stop_ids[s] = torch.tensor([ids + [-1] * (width - len(ids)) for ids in stop_ids], dtype=torch.long,
                                        device=dev)
        self.n_gen[s] = 0
        self.done[s] = False
        return s

    def first_tokens(self, s: torch.Tensor, logits_nV: torch.Tensor, truncate: bool, greedy_only: bool) -> None:
        """Sample the first token of completions in slots s [n] from their prompts' last logits [n, V]."""
        tok, lp = sample_tokens(logits_nV, self.temperature[s], self.top_k[s], self.top_p[s], self.min_p[s],
                                uniforms(self.keys[s], self.n_gen[s]), truncate=truncate, greedy_only=greedy_only)
        self._record(s, tok, lp, torch.ones_like(tok, dtype=torch.bool))

    def step(self, hi: int, truncate: bool, greedy_only: bool) -> None:
        """One decode step for rows [0, hi): feed the last token, sample the next, record it for live rows."""
        rows = slice(0, hi)
        cache = self.cache.rows(0, hi)
        live = ~self.done[rows]
        h = self.model.forward_hidden(self.last_tok[rows, None], cache=cache)
        logits = self.model.logits(h)[:, 0]
        tok, lp = sample_tokens(logits, self.temperature[rows], self.top_k[rows], self.top_p[rows], self.min_p[rows],
                                uniforms(self.keys[rows], self.n_gen[rows]), truncate=truncate,
                                greedy_only=greedy_only)
        self._record(rows, tok, lp, live)
        cache.seqlens.masked_fill_(self.done[rows], 0)            # dead rows restart at 0: they never overflow

    def move(self, src: int, dst: int) -> None:
        """Move the completion in slot src to the free slot dst (cache rows and per-slot state), so that the live
        rows stay a prefix and the decode batch shrinks as completions finish."""
        self.cache.copy_row(src, torch.tensor([dst], device=self.device))
        for t in (self.last_tok, self.n_gen, self.max_new, self.done, self.temperature, self.top_k, self.top_p,
                  self.min_p, self.keys, self.stop_ids, self.out_tok, self.out_lp):
            t[dst] = t[src]
        self.done[src] = True

    def _record(self, s, tok, lp, live) -> None:
        """Append tok/lp at each row's n_gen for the live rows of s (a slice or slot indices); update the counters
        and done flags. Dead rows rewrite what their column already holds."""
        col = self.n_gen[s].clamp(max=self.out_tok.shape[1] - 1)[:, None]
        out_tok, out_lp = self.out_tok[s], self.out_lp[s]
        out_tok = out_tok.scatter(1, col, torch.where(live[:, None], tok[:, None], out_tok.gather(1, col)))
        out_lp = out_lp.scatter(1, col, torch.where(live[:, None], lp[:, None], out_lp.gather(1, col)))
        self.out_tok[s], self.out_lp[s] = out_tok, out_lp
        self.n_gen[s] += live.long()
        stop = (tok[:, None] == self.stop_ids[s]).any(-1)
        self.done[s] |= live & (stop | (self.n_gen[s] >= self.max_new[s]))
        self.last_tok[s] = tok
