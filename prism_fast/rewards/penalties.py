"""Repetition measure behind the repetition penalty (the truncation penalty is a constant, applied in api.py).

repetition_fraction follows open-r1's repetition penalty: over whitespace-separated words, the share of n-grams
that repeat an earlier n-gram, 1 - unique / total (0 for text shorter than n words). A response looping on one
sentence tends to 1; ordinary prose with n=3 sits near 0.05-0.2. It runs in the worker pool: a 16k-token
response costs a few milliseconds, which over a 1024-rollout batch is worth spreading across workers.
"""
from __future__ import annotations


def repetition_fraction(text: str, n: int) -> float:
    """1 - (#distinct word n-grams / #word n-grams) of `text`, in [0, 1)."""
    if n < 1:
        raise ValueError(f"repetition_ngram must be >= 1, got {n}")
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    grams = zip(*(words[i:] for i in range(n)))
    return 1.0 - len(set(grams)) / total
