"""Held-out validation loader, per domain ("held-out validation loss per domain", DESIGN section 6).

The validation split of each source is its last documents (Mixture.val_fraction); the training loader never
reads them. For each domain in `mixture.domains` order, the validation documents of its sources are concatenated
in file order (no shuffle) and cut into rows of seq_len tokens; the last row of a domain is padded rather than
dropped, so every held-out token with a target is scored exactly once. Rows are dealt to ranks round-robin and
every rank gets the same number of batches (missing rows are all-padding, labels -100), so collective
reductions in the trainer never hang. Batches have the training loader's layout (loader.py).
"""
from __future__ import annotations


from prism_fast.data.loader import assemble_row, collate
from prism_fast.data.mixture import Mixture


class ValLoader:
    """Finite, re-iterable; `len()` = batches per rank."""

    def __init__(self, mixture: Mixture, *, seq_len: int, micro_batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, max_rows_per_domain: int | None = None, loss_mask_prompt: bool = False):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.mixture, self.seq_len, self.B = mixture, seq_len, micro_batch_size
        self.rank, self.W = rank, world_size
        self.loss_mask_prompt = loss_mask_prompt
        self.pad_id = mixture.eos_token_id
        # rows: (domain, [(source, doc, start, length), ...]) in global order.
        self.rows: list[tuple[int, list[tuple[int, int, int, int]]]] = []
        for dom in range(len(mixture.domains)):
            self.rows.extend(self._domain_rows(dom, max_rows_per_domain))
        per_rank = -(-len(self.rows) // world_size)
        self.num_batches = -(-per_rank // micro_batch_size)

    def _domain_rows(self, dom: int, limit: int | None):
        rows, cur, used = [], [], 0
        for i, s in enumerate(self.mixture.sources):
            if self.mixture.source_domain[i] != dom:
                continue
            n_train, n_docs = self.mixture.split(i)
            lens = s.shard().doc_lens()
            for d in range(n_train, n_docs):
                start, n = 0, int(lens[d])
                while n > 0:
                    take = min(n, self.seq_len - used)
                    cur.append((i, d, start, take))
                    used, start, n = used + take, start + take, n - take
                    if used == self.seq_len:
                        rows.append((dom, cur))
                        cur, used = [], 0
                        if limit is not None and len(rows) >= limit:
                            return rows
        if cur:
            rows.append((dom, cur))
        return rows

    def __len__(self) -> int:
        return self.num_batches

    def _row(self, g: int) -> dict:
        if g >= len(self.rows):  # this rank has no row left: an all-padding row keeps step counts equal
            return dict(assemble_row([], self.seq_len, self.pad_id), domain=0)
        dom, segs = self.rows[g]
        pieces = [(self.mixture.sources[i].shard(), d, start, n) for i, d, start, n in segs]
        return dict(assemble_row(pieces, self.seq_len, self.pad_id, self.loss_mask_prompt), domain=dom)

    def __iter__(self):
        for step in range(self.num_batches):
            ids = [(step * self.B + b) * self.W + self.rank for b in range(self.B)]
            yield collate([self._row(g) for g in ids], ids)


def build_val_loader(mixture: Mixture, *, seq_len: int, micro_batch_size: int = 1, rank: int = 0,
                     world_size: int = 1, max_rows_per_domain: int | None = None,
                     loss_mask_prompt: bool = False) -> ValLoader:
    """Validation batches over every domain's held-out documents (see module docstring). Pass the training
    loader's loss_mask_prompt to score the same tokens as training does."""
    return ValLoader(mixture, seq_len=seq_len, micro_batch_size=micro_batch_size, rank=rank,
                     world_size=world_size, max_rows_per_domain=max_rows_per_domain,
                     loss_mask_prompt=loss_mask_prompt)
