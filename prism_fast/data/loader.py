"""Packed, rank-aware, resumable loader over a Mixture.

Sample order. A *sample* is one packed row of seq_len tokens. Global sample g comes from source
`blended_index(weights)[g]` (exact shares, deterministic, no seed needed); its row inside that source comes from:
  - packing="concat": each epoch shuffles the source's training documents (seed, source, epoch); epochs are
    concatenated into one stream that is cut into rows of seq_len tokens (Megatron GPTDataset). A document may
    continue from one row into the next; rows are always full.
  - packing="bfd": the source's training documents (cut into chunks of seq_len overlapping by bfd_overlap tokens
    when longer) are packed once by best-fit-decreasing into bins; each epoch visits the bins in a shuffled
    order. Bins shorter than seq_len are padded (pad = EOS id, label -100, own cu_seqlens segment).
Both index builders run in C++ when prism_fast._native is built (ops.data_index), else in the Python twin.

Batch (dict of torch tensors) for micro_batch_size B rows, flattened into one packed row of T = B * seq_len:
  input_ids    int64 [1, T]
  labels       int64 [1, T]  next-token targets, already shifted: labels[t] = input_ids[t + 1] inside a document;
               -100 at a document's last token (its EOS: nothing to predict across a boundary), on padding, and,
               with loss_mask_prompt, where the target is a prompt token. At a row's end a document that goes on
               in the next row still gets its true next token (read from the shard), so no target is lost.
  position_ids int64 [1, T]  restart at 0 at every segment (document or piece of one inside this row)
  cu_seqlens   int32 [n_segments + 1]  segment starts, last = T (flash_attn_varlen convention)
  max_seqlen   int   longest segment
  domain_ids   int64 [1, T]  index into mixture.domains (per-domain loss); padding keeps its row's domain
  sample_ids   int64 [B]     global sample indices of the rows (for checks and logs)

Ranks. With world size W, step s of rank r reads global samples c + b * W + r (b < B) where c = cursor at step
s; the cursor advances by B * W per step. The union over ranks is the global order, ranks are disjoint, and
`state_dict()` is just the global cursor (plus a mixture identity check), so resuming on another world size
continues at the exact next sample.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from prism_fast.data.mixture import Mixture
from prism_fast.ops.data_index import bfd_index, blended_index, concat_index

PACKINGS = ("concat", "bfd")
IGNORE_INDEX = -100


class _SourceRows:
    """Row index of one source: row k -> list of (doc, start, length) segments of the training split."""

    def __init__(self, shard, n_train: int, seq_len: int, packing: str, seed: int, src: int, overlap: int,
                 min_doc_tokens: int = 0):
        self.shard, self.n_train, self.seq_len = shard, n_train, seq_len
        self.packing, self.seed, self.src = packing, seed, src
        self.lens = shard.doc_lens()[:n_train]
        if n_train == 0:
            raise ValueError(f"{shard.path}: no training documents left after the validation split")
        self._lock = threading.Lock()
        if packing == "bfd":
            keep = np.flatnonzero(self.lens >= max(min_doc_tokens, 1))       # short-document filter
            if len(keep) == 0:
                raise ValueError(f"{shard.path}: no training document has >= {min_doc_tokens} tokens; lower "
                                 f"data.min_doc_tokens")
            self.bin_ptr, self.segs = bfd_index(self.lens[keep], seq_len, overlap)
            self.segs[:, 0] = keep[self.segs[:, 0]]                                 # back to shard doc ids
            self.num_bins = len(self.bin_ptr) - 1
            self._bin_perm: dict[int, np.ndarray] = {}
        else:
            self.stream = np.zeros(0, dtype=np.int64)  # training doc ids, epochs back to back
            self.starts = np.zeros((1, 2), dtype=np.int64)

    def _perm(self, epoch: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.src, epoch]).permutation(n)

    def row(self, k: int) -> list[tuple[int, int, int]]:
        if self.packing == "bfd":
            epoch, j = divmod(k, self.num_bins)
            perm = self._bin_perm.get(epoch)
            if perm is None:
                perm = self._bin_perm.setdefault(epoch, self._perm(epoch, self.num_bins))
            b = int(perm[j])
            return [tuple(int(x) for x in s) for s in self.segs[self.bin_ptr[b]:self.bin_ptr[b + 1]]]
        with self._lock:
            if k + 1 >= len(self.starts):
                self._extend(k)
            stream, starts = self.stream, self.starts
        (pa, oa), (pb, ob) = starts[k], starts[k + 1]
        segs = []
        for p in range(int(pa), int(pb) + 1):
            d = int(stream[p]) if p < len(stream) else -1
            lo = int(oa) if p == pa else 0
            hi = int(ob) if p == pb else int(self.lens[d])
            if hi > lo:
                segs.append((d, lo, hi - lo))
        return segs

    def _extend(self, k: int) -> None:
        # Add whole epochs until row k exists; rows of a longer stream start with the rows of the shorter one.
        # At least doubling the stream keeps the rebuilds amortized O(1) per row for tiny sources.
        epochs = len(self.stream) // self.n_train
        tokens_per_epoch = int(self.lens.sum())
        need = -(-((k + 2) * self.seq_len - epochs * tokens_per_epoch) // tokens_per_epoch)
        add = max(1, need, epochs)
        parts = [self.stream] + [self._perm(e, self.n_train) for e in range(epochs, epochs + add)]
        self.stream = np.concatenate(parts).astype(np.int64)
        self.starts = concat_index(self.lens[self.stream], self.seq_len)


class PackedDataset:
    """Map-style dataset of packed rows over a Mixture: `ds[g]` -> dict of numpy arrays for global sample g
    (input_ids/labels/position_ids int64 [seq_len], seg_lens list, domain, source). See module docstring."""

    def __init__(self, mixture: Mixture, seq_len: int, *, packing: str = "concat", seed: int = 0,
                 bfd_overlap: int = 0, loss_mask_prompt: bool = False, min_doc_tokens: int = 0):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if packing == "bfd" and not 0 <= bfd_overlap < seq_len:
            raise ValueError(f"bfd_overlap must be in [0, seq_len), got {bfd_overlap}")
        self.mixture, self.seq_len, self.packing, self.seed = mixture, seq_len, packing, seed
        self.loss_mask_prompt = loss_mask_prompt
        self.pad_id = mixture.eos_token_id
        if min_doc_tokens and packing != "bfd":
            raise ValueError("min_doc_tokens (short-document filtering) needs packing='bfd'")
        self.rows = [_SourceRows(s.shard(), mixture.split(i)[0], seq_len, packing, seed, i, bfd_overlap,
                                 min_doc_tokens)
                     for i, s in enumerate(mixture.sources)]
        self._lock = threading.Lock()
        self._src = np.zeros(0, dtype=np.int16)
        self._src_sample = np.zeros(0, dtype=np.int64)

    def locate(self, g: int) -> tuple[int, int]:
        """(source, row within source) of global sample g; the blended index grows by doubling as needed."""
        if g < 0:
            raise IndexError(g)
        with self._lock:
            if g >= len(self._src):
                n = max(1 << 16, 2 * len(self._src))
                while n <= g:
                    n *= 2
                self._src, self._src_sample = blended_index(self.mixture.weights, n)
            return int(self._src[g]), int(self._src_sample[g])

    def __getitem__(self, g: int) -> dict:
        src, k = self.locate(g)
        shard = self.rows[src].shard
        row = assemble_row([(shard, d, start, n) for d, start, n in self.rows[src].row(k)], self.seq_len,
                           self.pad_id, self.loss_mask_prompt)
        return dict(row, domain=int(self.mixture.source_domain[src]), source=src)


def assemble_row(pieces: list, seq_len: int, pad_id: int, loss_mask_prompt: bool = False) -> dict:
    """One packed row from pieces (shard, doc, start, length): input_ids / labels / position_ids int64
    [seq_len] and seg_lens (a trailing padding segment when the pieces are shorter than seq_len)."""
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros(seq_len, dtype=np.int64)
    seg_lens, t = [], 0
    for shard, d, start, n in pieces:
        o = int(shard.offsets[d]) + start
        doc_end = int(shard.offsets[d + 1])
        ids[t:t + n] = shard.tokens[o:o + n]
        m = min(n, doc_end - o - 1)  # targets inside the document (the doc's last token has none)
        labels[t:t + m] = shard.tokens[o + 1:o + 1 + m]
        if loss_mask_prompt and shard.mask is not None:
            keep = shard.mask[o + 1:o + 1 + m].astype(bool)
            labels[t:t + m][~keep] = IGNORE_INDEX
        pos[t:t + n] = np.arange(n)
        seg_lens.append(n)
        t += n
    if t < seq_len:
        pos[t:] = np.arange(seq_len - t)
        seg_lens.append(seq_len - t)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "seg_lens": seg_lens}


def collate(rows: list[dict], sample_ids: list[int]) -> dict:
    """Flatten B rows into one packed row (see module docstring for the batch layout)."""
    seg_lens = [n for r in rows for n in r["seg_lens"]]
    cu = np.zeros(len(seg_lens) + 1, dtype=np.int32)
    np.cumsum(seg_lens, out=cu[1:])
    dom = np.concatenate([np.full(len(r["input_ids"]), r["domain"], dtype=np.int64) for r in rows])
    cat = {k: torch.from_numpy(np.concatenate([r[k] for r in rows]))[None] for k in
           ("input_ids", "labels", "position_ids")}
    return dict(cat, cu_seqlens=torch.from_numpy(cu), max_seqlen=int(max(seg_lens)),
                domain_ids=torch.from_numpy(dom)[None], sample_ids=torch.tensor(sample_ids, dtype=torch.int64))


class PackedLoader:
    """Iterator of batches for one data-parallel rank, prefetched by a background thread.

    Batches are built from the memory-mapped shards (numpy copies release the GIL), `prefetch` steps ahead.
    `num_samples` (global, optional) ends the iteration once the cursor reaches it.
    """

    def __init__(self, dataset: PackedDataset, *, micro_batch_size: int = 1, rank: int = 0, world_size: int = 1,
                 prefetch: int = 2, num_samples: int | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.dataset, self.B, self.rank, self.W = dataset, micro_batch_size, rank, world_size
        self.prefetch, self.num_samples = max(0, prefetch), num_samples
        self.cursor = 0  # global index of the first sample of the next step
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    @property
    def samples_per_step(self) -> int:
        """Global samples consumed per step (all ranks): micro_batch_size * world_size."""
        return self.B * self.W

    def batch_at(self, cursor: int) -> dict:
        """The batch of this rank for the step starting at global sample `cursor` (no state change)."""
        ids = [cursor + b * self.W + self.rank for b in range(self.B)]
        return collate([self.dataset[g] for g in ids], ids)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.num_samples is not None and self.cursor + self.samples_per_step > self.num_samples:
            raise StopIteration
        if self.prefetch == 0:
            batch = self.batch_at(self.cursor)
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            c, batch = item
            assert c == self.cursor, (c, self.cursor)
        self.cursor += self.samples_per_step
        return batch

    def _start(self) -> None:
        self._stop.clear()
        self._queue = q = queue.Queue(maxsize=self.prefetch)
        stop, start = self._stop, self.cursor

        def work() -> None:
            c = start
            try:
                while not stop.is_set():
                    if self.num_samples is not None and c + self.samples_per_step > self.num_samples:
                        return
                    item = (c, self.batch_at(c))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    c += self.samples_per_step
            except BaseException as e:  # surfaced by __next__ in the consumer thread
                q.put(e)

        self._thread = threading.Thread(target=work, name="prism-data-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread (prefetched batches are dropped; the cursor is unaffected)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict:
        """Resume point: the global cursor of the next step, valid for any world size."""
        ds = self.dataset
        return {"cursor": self.cursor, "seed": ds.seed, "seq_len": ds.seq_len, "packing": ds.packing,
                "mixture": ds.mixture.identity()}

    def load_state_dict(self, state: dict) -> None:
        ds = self.dataset
        for key, mine in (("seed", ds.seed), ("seq_len", ds.seq_len), ("packing", ds.packing),
                          ("mixture", ds.mixture.identity())):
            if key in state and state[key] != mine:
                raise ValueError(f"loader state was saved with {key}={state[key]!r} but this loader has "
                                 f"{key}={mine!r}; resume with the same data settings")
        self.close()
        self.cursor = int(state["cursor"])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def build_loader(mixture: Mixture, *, seq_len: int, micro_batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0, packing: str = "concat", bfd_overlap: int = 0,
                 prefetch: int = 2, loss_mask_prompt: bool = False,
                 num_samples: int | None = None, min_doc_tokens: int = 0) -> PackedLoader:
    """Training loader over `mixture` for one rank (module docstring: batch layout, order, resume)."""
    ds = PackedDataset(mixture, seq_len, packing=packing, seed=seed, bfd_overlap=bfd_overlap,
                       loss_mask_prompt=loss_mask_prompt, min_doc_tokens=min_doc_tokens)
    return PackedLoader(ds, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                        prefetch=prefetch, num_samples=num_samples)
