"""The rollout engine: continuous batching over the model's own caches, exact sampling log-probs.

Loop (one `generate` call): completions wait in request order; whenever slots are free the next requests are
admitted (all n samples of a request share ONE prefill: the prompt goes into one slot, the others copy its
cache rows), their prompts are prefilled together in packed forwards of at most `max_prefill_tokens` tokens, and
their first tokens are sampled from the prefill logits. Then the batch decodes `sync_every` steps on the device
(slots.py) and the host harvests finished completions (done flags, stop strings), freeing their slots for the
next requests at once. So a long answer never holds back a batch of short ones, and no row ever sits on padding.
Cache: one ModelCache of `num_slots` rows of capacity max(prompt + max_new_tokens) (contiguous per-row KV plus
Mamba conv/SSM state), kept across calls while it is large enough; `max_tokens_in_flight` caps slots x capacity.
Stop strings are checked on the host at sync points on the decoded text (so they match across token boundaries);
a completion that hits one keeps the tokens up to the one that completed it, its text is cut before the string.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from prism_fast.inference.params import Completion, RequestOutput, SamplingParams
from prism_fast.inference.prefill import kv_only, prefill_packed, prefill_rows, shared_prefix_len
from prism_fast.inference.sampler import stream_key
from prism_fast.inference.slots import SlotBatch
from prism_fast.inference.weights import full_weights, model_device, separate_projections


@dataclass
class _Completion:
    """Host bookkeeping of one (request, sample) while it runs."""
    request: int
    sample: int
    params: SamplingParams
    slot: int = -1
    checked: int = 0                      # tokens whose text was searched for stop strings
    result: Completion | None = None


@dataclass
class _Run:
    """One generate() call's requests and progress."""
    prompts: list[list[int]]
    params: list[SamplingParams]
    seeds: list[int]
    stop_ids: list[list[int]]
    waiting: deque = field(default_factory=deque)          # request indices with samples left to admit
    next_sample: list[int] = field(default_factory=list)
    by_slot: dict = field(default_factory=dict)            # slot -> _Completion
    finished: list = field(default_factory=list)


class Engine:
    """Generation engine over a prism_fast CausalLM (plain or FSDP2-sharded). See the module docstring.

    max_batch: decode rows (slots). max_tokens_in_flight: cap on slots x per-row capacity (the KV memory budget in
    tokens; None = no cap). tokenizer: enables string prompts, `text` and stop strings. sync_every: decode steps
    between host looks at the done flags (default 1 on CPU, where a look is free, 8 on CUDA). packed_prefill:
    False prefills prompt by prompt (the reference path). max_prefill_tokens: tokens per packed prefill forward.
    prefix_sharing: prompts of one packed prefill that start with the same >= 8 tokens (a chat template's system
    prompt) compute them once (attention-only models; prefill.py). Counted in stats["prefix_shared_tokens"].
    """

    def __init__(self, model, *, max_batch: int = 64, max_tokens_in_flight: int | None = None, tokenizer=None,
                 sync_every: int | None = None, packed_prefill: bool = True, max_prefill_tokens: int = 8192,
                 prefix_sharing: bool = True):
        if max_batch < 1:
            raise ValueError(f"Engine: max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_tokens_in_flight = max_tokens_in_flight
        self.device = model_device(model)
        self.sync_every = sync_every or (8 if self.device.type == "cuda" else 1)
        self.packed_prefill = packed_prefill
        self.max_prefill_tokens = max_prefill_tokens
        self.prefix_sharing = prefix_sharing and packed_prefill
        self.weights_version = 0
        self._cache = None                    # ModelCache kept across calls while large enough
        self._batch: SlotBatch | None = None  # device state of the current call
        self._free: list[int] = []            # free slots, ascending
        self.stats = {"prefill_tokens": 0, "decode_tokens": 0, "prefill_s": 0.0, "decode_s": 0.0,
                      "prefill_forwards": 0, "decode_steps": 0, "decode_rows": 0, "requests": 0, "completions": 0,
                      "host_syncs": 0, "slot_moves": 0, "prefix_shared_tokens": 0}

    def update_weights(self) -> None:
        """Pick up the policy's new weights (call after every optimizer step). The engine reads the live model's
        parameters (an FSDP2 model is re-gathered on every generate) and no state outlives a call (each prefill
        rewrites its cache rows; the cache buffers are only reused), so there is nothing to copy or rebuild: this
        counts the version (`weights_version`), the hook a compiled or CUDA-graph step would need."""
        self.weights_version += 1

    # ---- API ----
    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None, *,
                 progress: bool = False) -> list[RequestOutput]:
        """Continue every prompt (token-id lists, or strings with a tokenizer); outputs in prompt order."""
        token_prompts = self._tokenize(prompts)
        plist = self._params_list(params, len(token_prompts))
        if not token_prompts:
            return []
        run = self._new_run(token_prompts, plist)
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with full_weights(model), tqdm(total=sum(p.n for p in plist), disable=not progress, unit="seq",
                                           desc="generate") as bar:
                self._loop(run, bar)
        finally:
            model.train(was_training)
        self.stats["requests"] += len(token_prompts)
        self.stats["completions"] += len(run.finished)
        outs = [RequestOutput(i, p, [None] * prm.n, prompt=prompts[i] if isinstance(prompts[i], str) else None)
                for i, (p, prm) in enumerate(zip(token_prompts, plist))]
        for c in run.finished:
            outs[c.request].outputs[c.sample] = c.result
        return outs

    # ---- setup ----
    def _tokenize(self, prompts) -> list[list[int]]:
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise ValueError("Engine.generate: prompts must be a list (of token-id lists, or of strings)")
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("Engine.generate: string prompts need Engine(..., tokenizer=...); "
                                     "or pass token-id lists")
                p = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            p = [int(t) for t in p]
            if not p:
                raise ValueError("Engine.generate: every prompt needs at least one token (prepend a BOS token)")
            out.append(p)
        return out

    def _params_list(self, params, n: int) -> list[SamplingParams]:
        if params is None:
            params = SamplingParams()
        plist = [params] * n if isinstance(params, SamplingParams) else list(params)
        if len(plist) != n:
            raise ValueError(f"Engine.generate: got {len(plist)} SamplingParams for {n} prompts (pass one, or one "
                             "per prompt)")
        if self.tokenizer is None and any(p.stop for p in plist):
            raise ValueError("Engine.generate: stop strings need Engine(..., tokenizer=...)")
        return plist

    def _new_run(self, prompts, plist) -> _Run:
        eos = list(self.model.config.eos_token_ids)
        seeds = [p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item()) for p in plist]
        stop_ids = [sorted(set(([] if p.ignore_eos else eos) + list(p.stop_token_ids or []))) for p in plist]
        run = _Run(prompts, plist, seeds, stop_ids, deque(range(len(prompts))), [0] * len(prompts))
        capacity = max(len(p) + prm.max_new_tokens for p, prm in zip(prompts, plist))
        slots = min(self.max_batch, sum(p.n for p in plist))
        if self.max_tokens_in_flight is not None:
            if self.max_tokens_in_flight < capacity:
                raise ValueError(f"Engine: max_tokens_in_flight={self.max_tokens_in_flight} cannot hold one "
                                 f"sequence of {capacity} tokens (longest prompt + max_new_tokens); raise it")
            slots = min(slots, self.max_tokens_in_flight // capacity)
        c = self._cache
        if c is None or c.batch_size < slots or c.max_seq_len < capacity:
            self._cache = None                                    # free the old one before allocating
            # the compute dtype, not the parameters' one: an FSDP2 mixed-precision policy's sharded (fp32) params
            # differ from the gathered (bf16) weights the blocks compute with, and K/V must match those
            c = self._cache = self.model.new_cache(slots, capacity, dtype=getattr(torch, self.model.kernels.dtype))
        c.seqlens.zero_()                                         # rows of an earlier call hold nothing now
        self._batch = SlotBatch(self.model, c, c.batch_size, max(p.max_new_tokens for p in plist),
                                max(len(s) for s in stop_ids), self.device)
        self._free = list(range(c.batch_size))
        return run

    # ---- the loop ----
    def _loop(self, run: _Run, bar) -> None:
        while run.waiting or run.by_slot:
            if run.waiting and self._free:
                self._admit(run)
                bar.update(self._harvest(run))                 # completions that ended at their first token
            if not run.by_slot:
                continue
            hi = max(run.by_slot) + 1
            truncate = any(c.params.truncates for c in run.by_slot.values())
            greedy_only = all(c.params.greedy for c in run.by_slot.values())
            t0 = time.perf_counter()
            with separate_projections(self.model):
                for _ in range(self.sync_every):
                    self._batch.step(hi, truncate, greedy_only)
            self.stats["decode_steps"] += self.sync_every
            self.stats["decode_rows"] += self.sync_every * hi
            n_done = self._harvest(run)
            if not run.waiting:
                self._compact(run)
            self.stats["decode_s"] += time.perf_counter() - t0
            bar.update(n_done)

    def _compact(self, run: _Run) -> None:
        """No request waits: move the highest live completions into the lowest free slots (see slots.py)."""
        while run.by_slot and self._free and self._free[0] < max(run.by_slot):
            src, dst = max(run.by_slot), self._free.pop(0)
            self._batch.move(src, dst)
            c = run.by_slot.pop(src)
            c.slot = dst
            run.by_slot[dst] = c
            self._free.append(src)
            self.stats["slot_moves"] += 1
        self._free.sort()

    def _admit(self, run: _Run) -> None:
        """Take requests in order while slots are free; prefill them in packs; sample their first tokens."""
        t0 = time.perf_counter()
        groups = []                                               # (request, [completions]) sharing one prefill
        while run.waiting and self._free:
            i = run.waiting[0]
            k = min(run.params[i].n - run.next_sample[i], len(self._free))
            comps = [_Completion(i, run.next_sample[i] + j, run.params[i], slot=self._free.pop(0)) for j in range(k)]
            run.next_sample[i] += k
            if run.next_sample[i] == run.params[i].n:
                run.waiting.popleft()
            groups.append((i, comps))
        batch = self._batch
        slots = [c.slot for _, g in groups for c in g]
        s = batch.assign(slots, [c.params for _, g in groups for c in g],
                         [stream_key(run.seeds[c.request], c.request, c.sample) for _, g in groups for c in g],
                         [run.stop_ids[c.request] for _, g in groups for c in g])
        logits = []
        for pack in self._packs([run.prompts[i] for i, _ in groups]):
            prompts = [run.prompts[groups[j][0]] for j in pack]
            heads = [groups[j][1][0].slot for j in pack]
            if not self.packed_prefill:
                logits.append(prefill_rows(self.model, batch.cache, prompts, heads))
            else:
                prefix = shared_prefix_len(prompts) if self.prefix_sharing and kv_only(batch.cache) else 0
                logits.append(prefill_packed(self.model, batch.cache, prompts, heads, prefix=prefix))
                self.stats["prefix_shared_tokens"] += prefix * (len(prompts) - 1)
            self.stats["prefill_tokens"] += sum(len(p) for p in prompts)
            self.stats["prefill_forwards"] += 1 if self.packed_prefill else len(prompts)
        logits = torch.cat(logits)
        for (_, g) in groups:
            if len(g) > 1:
                batch.cache.copy_row(g[0].slot, torch.tensor([c.slot for c in g[1:]], device=self.device))
        rep = torch.tensor([len(g) for _, g in groups], device=self.device)
        comps = [c for _, g in groups for c in g]
        batch.first_tokens(s, logits.repeat_interleave(rep, dim=0), any(c.params.truncates for c in comps),
                           all(c.params.greedy for c in comps))
        for _, g in groups:
            for c in g:
                run.by_slot[c.slot] = c
        self.stats["prefill_s"] += time.perf_counter() - t0

    def _packs(self, prompts: list[list[int]]) -> list[list[int]]:
        """Split prompt indices into packs of at most max_prefill_tokens tokens (a longer prompt goes alone)."""
        packs, cur, size = [], [], 0
        for j, p in enumerate(prompts):
            if cur and size + len(p) > self.max_prefill_tokens:
                packs.append(cur)
                cur, size = [], 0
            cur.append(j)
            size += len(p)
        return packs + [cur]

    def _harvest(self, run: _Run) -> int:
        """Host look at the done flags (one sync): finish completions, free their slots. Returns how many ended."""
        self.stats["host_syncs"] += 1
        batch = self._batch
        done = batch.done.tolist()
        n_gen = batch.n_gen.tolist()
        ended = 0
        for slot, c in list(run.by_slot.items()):
            cut = self._stop_string_cut(c, batch.out_tok[slot, :n_gen[slot]].tolist()) if c.params.stop else None
            if not done[slot] and cut is None:
                continue
            n = cut if cut is not None else n_gen[slot]
            toks = batch.out_tok[slot, :n].tolist()
            lps = batch.out_lp[slot, :n].tolist() if c.params.logprobs else None
            stopped = cut is not None or toks[-1] in run.stop_ids[c.request]
            text = None
            if self.tokenizer is not None:
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                if cut is not None:
                    text = text[:min(i for i in (text.find(s) for s in c.params.stop) if i >= 0)]
            c.result = Completion(toks, lps, text, "stop" if stopped else "length", index=c.sample)
            self.stats["decode_tokens"] += n - 1
            batch.done[slot] = True
            del run.by_slot[slot]
            self._free.append(slot)
            run.finished.append(c)
            ended += 1
        self._free.sort()
        return ended

    def _stop_string_cut(self, c: _Completion, toks: list[int]) -> int | None:
        """Smallest token count whose decoded text contains one of c's stop strings, or None. Only the tokens
        added since the last look are new candidates (a stop string can end in one of them only)."""
        decode = self.tokenizer.decode
        if not any(s in decode(toks, skip_special_tokens=True) for s in c.params.stop):
            c.checked = len(toks)
            return None
        for n in range(max(1, c.checked), len(toks) + 1):
            if any(s in decode(toks[:n], skip_special_tokens=True) for s in c.params.stop):
                return n
        return len(toks)
