"""Weighted mixtures of token shards: Source (a shard directory, a weight, a domain) and Mixture.

Weights are sampling shares of *rows* (packed sequences of seq_len tokens), so with concat packing they are
token shares, as in Megatron's blended datasets and the paper's percentages. The blended order is exact
(ops.data_index.blended_index: after any prefix each source is within one row of its share), and
`Mixture.report` states the implied epochs per source for a run of N rows. A held-out validation split is carved
out of every source: its last `val_fraction` documents (at least one when the source has two or more), never
seen by the training loader.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prism_fast.data.shards import Shard, open_shard


@dataclass
class Source:
    """One mixture component. path: shard directory. weight: relative sampling weight (normalized by the
    Mixture). domain: label for per-domain loss (default: the shard's meta domain)."""
    path: str | os.PathLike
    weight: float
    domain: str | None = None
    name: str | None = None
    _shard: Shard | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"Source {self.path}: weight must be a positive number, got {self.weight!r}")
        if self.name is None:
            self.name = Path(self.path).name

    def shard(self, expected_fingerprint: str | None = None) -> Shard:
        if self._shard is None:
            self._shard = open_shard(self.path, expected_fingerprint)
            if self.domain is None:
                self.domain = self._shard.meta.get("domain") or self.name
        elif expected_fingerprint is not None and self._shard.fingerprint != expected_fingerprint:
            open_shard(self.path, expected_fingerprint)  # raises with the message naming the shard
        return self._shard


class Mixture:
    """A list of Sources with normalized weights.

    domains: sorted unique domain names; `domain_ids` in batches index this list.
    val_fraction: share of each source's documents (its last ones) held out for validation.
    expected_fingerprint: tokenizer fingerprint of the model; every shard must match (ValueError otherwise).
    Shards are opened at construction: a missing, incomplete or corrupt shard fails here, naming its path.
    """

    def __init__(self, sources: list[Source], *, val_fraction: float = 0.01,
                 expected_fingerprint: str | None = None):
        if not sources:
            raise ValueError("a Mixture needs at least one Source")
        if not 0.0 <= val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {val_fraction}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}; pass Source(name=...)")
        self.sources = list(sources)
        self.val_fraction = val_fraction
        shards = [s.shard(expected_fingerprint) for s in self.sources]
        fps = {sh.fingerprint for sh in shards}
        if len(fps) > 1:
            detail = ", ".join(f"{s.name}: {sh.fingerprint[:12]}" for s, sh in zip(self.sources, shards))
            raise ValueError(f"mixture shards were made with different tokenizers ({detail}); re-run prepare "
                             "with one tokenizer")
        self.fingerprint = fps.pop()
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.weights = w / w.sum()
        self.domains = sorted({s.domain for s in self.sources})
        self.source_domain = np.array([self.domains.index(s.domain) for s in self.sources], dtype=np.int64)
        self.eos_token_id = int(shards[0].meta["tokenizer"]["eos_token_id"])

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={w:.4f}" for s, w in zip(self.sources, self.weights))
        return f"Mixture({parts})"

    def split(self, i: int) -> tuple[int, int]:
        """(num_train_docs, num_docs) of source i: documents [num_train_docs, num_docs) are validation."""
        n = self.sources[i].shard().num_docs
        n_val = 0 if n < 2 else max(1, int(n * self.val_fraction)) if self.val_fraction > 0 else 0
        return n - n_val, n

    def train_tokens(self, i: int) -> int:
        n_train, _ = self.split(i)
        return int(self.sources[i].shard().offsets[n_train])

    def identity(self) -> str:
        """Hash of what decides the sample order (names, weights, shard sizes, split): stored in loader state."""
        spec = [(s.name, float(w), s.shard().num_docs, int(s.shard().offsets[-1]))
                for s, w in zip(self.sources, self.weights)]
        return hashlib.sha256(json.dumps([spec, self.val_fraction]).encode()).hexdigest()[:16]

    def report(self, num_samples: int, seq_len: int | None = None, *, packing: str = "concat",
               bfd_overlap: int = 0) -> list[dict]:
        """Implied epochs per source for a run of `num_samples` rows of `seq_len` tokens.

        Returns one dict per source: name, domain, weight, samples (rows drawn, exact blended count), tokens,
        available_tokens (training split), epochs. With packing="bfd" an epoch is the source's bin count.
        """
        from prism_fast.ops.data_index import bfd_index, blended_index

        if seq_len is None:
            raise ValueError("report needs seq_len (tokens per sample) to turn samples into epochs")
        src, _ = blended_index(self.weights, num_samples)
        counts = np.bincount(src, minlength=len(self.sources))
        rows = []
        for i, s in enumerate(self.sources):
            avail = self.train_tokens(i)
            if packing == "bfd":
                n_train, _ = self.split(i)
                per_epoch = len(bfd_index(s.shard().doc_lens()[:n_train], seq_len, bfd_overlap)[0]) - 1
            else:
                per_epoch = avail / seq_len
            rows.append({"name": s.name, "domain": s.domain, "weight": float(self.weights[i]),
                         "samples": int(counts[i]), "tokens": int(counts[i]) * seq_len, "available_tokens": avail,
                         "epochs": float(counts[i] / per_epoch) if per_epoch else math.inf})
        return rows

    def format_report(self, num_samples: int, seq_len: int, **kw) -> str:
        lines = [f"{'source':<24}{'domain':<10}{'weight':>8}{'samples':>10}{'tokens':>14}{'available':>14}"
                 f"{'epochs':>8}"]
        for r in self.report(num_samples, seq_len, **kw):
            lines.append(f"{r['name']:<24}{r['domain']:<10}{r['weight']:>8.4f}{r['samples']:>10}"
                         f"{r['tokens']:>14}{r['available_tokens']:>14}{r['epochs']:>8.2f}")
        return "\n".join(lines)
