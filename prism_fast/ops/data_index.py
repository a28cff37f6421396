"""Data-index builders of the data pipeline: blended (mixture) index, concat-and-chunk index, best-fit-decreasing
packing index. Each has a C++ implementation (csrc/data, module prism_fast._native) and a pure-Python twin
`*_ref` that returns bit-identical arrays; tests compare them exactly.

Unusual for prism_fast.ops: these are numpy (host) ops, not torch ops. They live here because ops/ is the only
layer that calls csrc/ (DESIGN section 1). Backends: "native" (C++, default when the module imports) and "python".

Float determinism: the blended index compares float64 expressions (`w[j] * n - count[j]`, `(count[j] + 1 - delta)
/ w[j]`) in the same order in both; C++ is compiled with -ffp-contract=off so no FMA changes a rounding, and
Python floats are IEEE doubles, so both pick the same source.
"""
from __future__ import annotations

import heapq

import numpy as np

from prism_fast.ops._dispatch import resolve

try:  # the native module is built by CMake with the package; a source checkout without a build falls back
    from prism_fast import _native
    _HAS_NATIVE = hasattr(_native, "build_blended_index")
except ImportError:  # pragma: no cover - depends on the build
    _native = None
    _HAS_NATIVE = False

_BACKENDS = ("native", "python")


def native_available() -> bool:
    """True when the C++ index builders are importable."""
    return _HAS_NATIVE


def _pick(op: str, backend: str) -> str:
    name = resolve(op, backend, _BACKENDS, ["native", "python"] if _HAS_NATIVE else ["python"])
    if name == "native" and not _HAS_NATIVE:
        raise RuntimeError(f"{op}: the native module prism_fast._native is missing; rebuild with "
                           "`pip install --no-build-isolation -e .` or pass backend='python'")
    return name


def _check_weights(weights) -> np.ndarray:
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be a non-empty 1-D array of finite non-negative numbers with a positive "
                         f"sum, got {weights!r}")
    if w.size > 32767:
        raise ValueError(f"at most 32767 sources are supported (int16 source index), got {w.size}")
    return w / w.sum()


# ----------------------------------------------------------------------------------------------- blended index
def blended_index_ref(weights: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure-Python twin of `blended_index` (same arguments and results)."""
    w = _check_weights(weights).tolist()
    n_src = len(w)
    delta = 1.0 / (2 * n_src - 2) if n_src > 1 else 0.5
    counts = [0] * n_src
    src = np.empty(num_samples, dtype=np.int16)
    sample = np.empty(num_samples, dtype=np.int64)
    for i in range(num_samples):
        n = float(i + 1)
        # Earliest deadline first over the released sources (Tijdeman's chairman assignment).
        best, best_deadline = -1, 0.0
        for j in range(n_src):
            if w[j] > 0.0 and w[j] * n - counts[j] >= delta:
                deadline = (counts[j] + 1 - delta) / w[j]
                if best < 0 or deadline < best_deadline:
                    best, best_deadline = j, deadline
        if best < 0:  # only reachable through float rounding: fall back to the largest deficit (Megatron rule)
            best, best_err = 0, w[0] * n - counts[0]
            for j in range(1, n_src):
                err = w[j] * n - counts[j]
                if err > best_err:
                    best, best_err = j, err
        src[i] = best
        sample[i] = counts[best]
        counts[best] += 1
    return src, sample


def blended_index(weights: np.ndarray, num_samples: int, *,
                  backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Blend sources by weight exactly: a deterministic interleaving in which, after ANY prefix of n samples,
    every source's count c_j(n) satisfies |c_j(n) - w_j n| <= 1 - 1 / (2S - 2) < 1.

    Why not Megatron's greedy `build_blending_indices` (pick the largest deficit w_j n - c_j): its deficits can
    exceed one sample with many sources (we measured 1.03 with 7 random weights). This is Tijdeman's solution of
    the chairman assignment problem (1980): the k-th sample of source j is released once w_j n - (k - 1) >=
    delta = 1 / (2S - 2) and is due at n = (k - delta) / w_j; at each step the released source with the
    earliest due time wins (ties: lowest index). Online, so the result for N is a prefix of the result for any
    larger N (it can be extended lazily).

    weights: float [S] (normalized here). num_samples: N.
    Returns (source int16 [N], source_sample int64 [N]): sample i is the source_sample[i]-th sample of source
    source[i].
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if _pick("blended_index", backend) == "python":
        return blended_index_ref(weights, num_samples)
    return _native.build_blended_index(_check_weights(weights), int(num_samples))


# ------------------------------------------------------------------------------------- concat-and-chunk index
def _check_lens(doc_lens) -> np.ndarray:
    lens = np.ascontiguousarray(doc_lens, dtype=np.int64)
    if lens.ndim != 1 or (lens.size and lens.min() < 1):
        raise ValueError("doc_lens must be a 1-D array of positive document lengths")
    return lens


def concat_index_ref(doc_lens: np.ndarray, seq_len: int) -> np.ndarray:
    """Pure-Python twin of `concat_index`."""
    lens = _check_lens(doc_lens).tolist()
    total = sum(lens)
    num_rows = total // seq_len
    starts = np.zeros((num_rows + 1, 2), dtype=np.int64)
    doc, off = 0, 0
    for r in range(1, num_rows + 1):
        need = seq_len
        while need > 0:
            take = lens[doc] - off
            if take > need:
                off += need
                need = 0
            else:
                need -= take
                doc += 1
                off = 0
        starts[r, 0] = doc
        starts[r, 1] = off
    return starts


def concat_index(doc_lens: np.ndarray, seq_len: int, *, backend: str = "auto") -> np.ndarray:
    """Concat-and-chunk rows over a stream of documents (Megatron `build_sample_idx`).

    doc_lens: int64 [D], lengths of the documents in stream order (all > 0). seq_len: L.
    Returns starts int64 [R + 1, 2] with R = sum(doc_lens) // L: row r holds tokens from (document
    starts[r, 0], offset starts[r, 1]) up to, not including, (starts[r + 1, 0], starts[r + 1, 1]): always L tokens.
    The trailing sum(doc_lens) % L tokens form no row.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if _pick("concat_index", backend) == "python":
        return concat_index_ref(doc_lens, seq_len)
    return _native.build_concat_index(_check_lens(doc_lens), int(seq_len))


# ------------------------------------------------------------------------------- best-fit-decreasing packing
def _chunks(lens: list[int], seq_len: int, overlap: int):
    """Split documents longer than seq_len into chunks of seq_len tokens starting every seq_len - overlap tokens;
    the last chunk ends at the document end. Yields (doc, start, length)."""
    stride = seq_len - overlap
    for d, n in enumerate(lens):
        if n <= seq_len:
            yield d, 0, n
            continue
        start = 0
        while True:
            if start + seq_len >= n:
                yield d, start, n - start
                break
            yield d, start, seq_len
            start += stride


def bfd_index_ref(doc_lens: np.ndarray, seq_len: int, overlap: int = 0):
    """Pure-Python twin of `bfd_index`."""
    _check_bfd(seq_len, overlap)
    lens = _check_lens(doc_lens).tolist()
    items = list(_chunks(lens, seq_len, overlap))
    # Stable sort by decreasing length: ties keep stream order (C++ uses std::stable_sort with the same key).
    items.sort(key=lambda it: -it[2])
    # Open bins by free space: `heaps[f]` holds the ids of open bins with exactly f free tokens (min-heap, so
    # ties go to the oldest bin); `tree` is a segment tree of "some bin has this free space" for the query
    # "smallest free space >= need", O(log L) per item.
    size = 1
    while size < seq_len + 1:
        size *= 2
    tree = [0] * (2 * size)
    heaps: list[list[int]] = [[] for _ in range(seq_len + 1)]

    def _set(f: int, v: int) -> None:
        i = f + size
        tree[i] = v
        i //= 2
        while i:
            tree[i] = tree[2 * i] | tree[2 * i + 1]
            i //= 2

    def _first_at_least(need: int) -> int:
        # Leftmost leaf >= need with a set flag, or -1.
        lo, hi = need + size, 2 * size - 1
        cands_left, cands_right = [], []
        while lo <= hi:
            if lo & 1:
                cands_left.append(lo)
                lo += 1
            if not hi & 1:
                cands_right.append(hi)
                hi -= 1
            lo //= 2
            hi //= 2
        for node in cands_left + cands_right[::-1]:
            if tree[node]:
                while node < size:
                    node = 2 * node if tree[2 * node] else 2 * node + 1
                return node - size
        return -1

    bin_segs: list[list[tuple[int, int, int]]] = []
    bin_free: list[int] = []
    for d, s, n in items:
        f = _first_at_least(n)
        if f < 0:
            b = len(bin_segs)
            bin_segs.append([])
            bin_free.append(seq_len)
        else:
            b = heapq.heappop(heaps[f])
            if not heaps[f]:
                _set(f, 0)
        bin_segs[b].append((d, s, n))
        bin_free[b] -= n
        nf = bin_free[b]
        if nf > 0:
            heapq.heappush(heaps[nf], b)
            _set(nf, 1)
    nseg = len(items)
    bin_ptr = np.zeros(len(bin_segs) + 1, dtype=np.int64)
    seg = np.empty((nseg, 3), dtype=np.int64)
    k = 0
    for b, segs in enumerate(bin_segs):
        for d, s, n in segs:
            seg[k] = (d, s, n)
            k += 1
        bin_ptr[b + 1] = k
    return bin_ptr, seg


def _check_bfd(seq_len: int, overlap: int) -> None:
    if seq_len < 1 or not 0 <= overlap < seq_len:
        raise ValueError(f"need seq_len >= 1 and 0 <= overlap < seq_len, got seq_len={seq_len}, overlap={overlap}")


def bfd_index(doc_lens: np.ndarray, seq_len: int, overlap: int = 0, *,
              backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Best-fit-decreasing packing of documents into rows of at most seq_len tokens (PRISM long-context phase).

    Documents longer than seq_len are cut into chunks of seq_len tokens that start every seq_len - overlap tokens
    (the last chunk ends at the document end, so consecutive chunks share `overlap` or more tokens). Chunks are
    sorted by decreasing length (stable) and each goes into the open bin with the smallest sufficient free space
    (oldest bin on ties), else into a new bin.

    doc_lens: int64 [D] (> 0). Returns (bin_ptr int64 [B + 1], segments int64 [S, 3]): bin b holds the
    segments[bin_ptr[b]:bin_ptr[b+1]] rows (doc, start, length), in placement order; each bin sums to <= seq_len.
    """
    _check_bfd(seq_len, overlap)
    if _pick("bfd_index", backend) == "python":
        return bfd_index_ref(doc_lens, seq_len, overlap)
    return _native.build_bfd_index(_check_lens(doc_lens), int(seq_len), int(overlap))
