"""Streaming engine behind `weights`, `direction` and `trajectory`: per-element statistics of checkpoint
differences, computed one row-chunk of one tensor at a time, optionally in several worker processes.

A job is a list of checkpoints, a list of `pairs` (base index, new index) and optional `crosses` (pair p, pair q)
whose update dot products are wanted (update direction). Work is cut into items = (tensor, row range, pieces):
safetensors tensors are read by row chunks of <= `chunk_elements` elements (so even a 2.7 GB embedding never sits
in memory whole), DCP tensors whole. Per item and pair we keep only sums, so the merge is exact addition.

Memory per worker for a chunk of n elements: base fp32 + |base| fp32 + new (stored dtype, then fp32 diff in place)
~ 12-14 n bytes, plus one kept diff per pair in `crosses`. Nothing scales with model size.

Per-element relative change is |w_new - w_old| / |w_old|, computed as a division in fp32; for w_old == 0 it is
inf when w_new != 0 (counted as changed at every threshold) and nan (0/0, never counted) when w_new == 0. The
number of zero old elements and of those that changed are returned, so a report can state the guard.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from prism_fast.analysis.components import classify, layer_index
from prism_fast.analysis.readers import CheckpointReader, cached_reader, open_checkpoint

DEFAULT_THRESHOLDS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.10)
# Fields of the per (piece, pair) stats vector; CHANGED_0 + k is the count above thresholds[k].
NUMEL, OLD_SQ, DIFF_SQ, ZERO_OLD, ZERO_CHANGED, CHANGED_0 = range(6)
DEFAULT_CHUNK_ELEMENTS = 1 << 23  # 8M elements: ~110 MB of working buffers per worker (see module docstring)


@dataclass
class Piece:
    """A (tensor, row range) that belongs to one component. Fused matrices have several pieces."""
    name: str
    component: str
    layer: int | None
    r0: int | None
    r1: int | None
    numel: int


@dataclass
class CompareResult:
    """stats: float64 [n_pieces, n_pairs, CHANGED_0 + n_thresholds]; cross: float64 [n_pieces, n_crosses]
    (dot products of the two pairs' updates). Sums over elements, so any aggregation is a sum over pieces."""
    paths: list[str]
    pairs: list[tuple[int, int]]
    crosses: list[tuple[int, int]]
    thresholds: tuple[float, ...]
    pieces: list[Piece]
    stats: np.ndarray
    cross: np.ndarray
    skipped: dict[str, list[str]] = field(default_factory=dict)
    bytes_read: int = 0
    workers: int = 1


def _plan(readers: list[CheckpointReader], chunk_elements: int, allow_unclassified: bool):
    """Common tensor names -> pieces and work items (name, r0, r1, [(piece_idx, lo, hi) relative rows])."""
    name_sets = [set(r.names()) for r in readers]
    common = set.intersection(*name_sets)
    skipped: dict[str, list[str]] = {}
    for i, (r, s) in enumerate(zip(readers, name_sets)):
        missing = sorted(set.union(*name_sets) - s)
        if missing:
            skipped[f"missing_in:{r.path}"] = missing
    order = [n for n in readers[0].names() if n in common]
    pieces: list[Piece] = []
    items = []
    sliceable = all(r.row_sliceable for r in readers)
    for name in order:
        shapes = {tuple(r.shape(name)) for r in readers}
        if len(shapes) > 1:
            skipped.setdefault("shape_mismatch", []).append(f"{name}: {sorted(shapes)}")
            continue
        shape = shapes.pop()
        if not all(r.dtype(name).is_floating_point for r in readers):
            skipped.setdefault("not_floating_point", []).append(name)
            continue
        rows = shape[0] if shape else 1
        row_elems = 1
        for s in shape[1:]:
            row_elems *= s
        whole = []
        for comp, a, b in classify(name, shape, allow_unclassified=allow_unclassified):
            a, b = (0, rows) if a is None else (a, b)
            pieces.append(Piece(name, comp, layer_index(name), a, b, (b - a) * row_elems))
            pi = len(pieces) - 1
            if sliceable:
                step = max(1, chunk_elements // max(row_elems, 1))
                for r0 in range(a, b, step):
                    r1 = min(b, r0 + step)
                    items.append((name, r0, r1, [(pi, 0, r1 - r0)]))
            else:
                whole.append((pi, a, b))
        if whole:
            items.append((name, None, None, whole))
    return pieces, items, skipped


def _item_stats(item, readers, pairs, crosses, thresholds):
    """Stats of one work item: (stats [k, n_pairs, F], cross [k, n_crosses]) for its k pieces, and bytes read."""
    name, r0, r1, pieces = item
    nf = CHANGED_0 + len(thresholds)
    out = np.zeros((len(pieces), len(pairs), nf))
    cross_out = np.zeros((len(pieces), len(crosses)))
    keep = {p for c in crosses for p in c}
    diffs: dict[int, torch.Tensor] = {}
    base_i, old, absold = None, None, None
    nbytes = 0
    row_elems = 1
    for s_ in readers[0].shape(name)[1:]:
        row_elems *= s_
    views = [(k, lo * row_elems, hi * row_elems) for k, (_, lo, hi) in enumerate(pieces)]

    def load(ci):
        nonlocal nbytes
        t = readers[ci].read(name, r0, r1)
        nbytes += t.numel() * t.element_size()
        # .float() copies unless already fp32; the read buffer is ours either way, so in-place ops are safe
        return t.reshape(-1).float()

    for pi, (bi, ni) in enumerate(pairs):
        if bi != base_i:
            base_i, old, absold = bi, None, None  # free the previous base before reading the next
            old = load(bi)
            absold = old.abs()
        diff = load(ni).sub_(old)
        if pi in keep:
            diffs[pi] = diff.clone()
        for k, lo, hi in views:
            o, d, a = old[lo:hi], diff[lo:hi], absold[lo:hi]
            s = out[k, pi]
            s[NUMEL] = hi - lo
            s[OLD_SQ] = torch.dot(o, o).item()
            s[DIFF_SQ] = torch.dot(d, d).item()
            s[ZERO_OLD] = (hi - lo) - torch.count_nonzero(a).item()
        ratio = diff.abs_().div_(absold)  # in place: diff is dead after this
        for k, lo, hi in views:
            r = ratio[lo:hi]
            s = out[k, pi]
            if s[ZERO_OLD]:
                s[ZERO_CHANGED] = torch.isinf(r).sum().item()
            for t_i, t in enumerate(thresholds):
                s[CHANGED_0 + t_i] = torch.count_nonzero(r > t).item()
        del diff, ratio
    for ci, (p, q) in enumerate(crosses):
        dp, dq = diffs[p], diffs[q]
        for k, lo, hi in views:
            cross_out[k, ci] = torch.dot(dp[lo:hi], dq[lo:hi]).item()
    return out, cross_out, nbytes


_CTX = None


def _worker_init(ctx):
    global _CTX
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe
    readers, pairs, crosses, thresholds = ctx
    _CTX = ([cached_reader(r) for r in readers], pairs, crosses, thresholds)


def _worker_run(item):
    readers, pairs, crosses, thresholds = _CTX
    return _item_stats(item, readers, pairs, crosses, thresholds)


def resolve_workers(workers: int | str) -> int:
    """'auto' -> one worker per available core (at most 8); ints are taken as given."""
    if workers == "auto":
        return max(1, min(8, len(os.sched_getaffinity(0))))
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or 'auto' (got {workers})")
    return workers


def compare(paths, pairs, *, crosses=(), thresholds=DEFAULT_THRESHOLDS, workers: int | str = 1,
            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, allow_unclassified: bool = False, progress: bool = False,
            dcp_prefix: str = "auto") -> CompareResult:
    """Stream the checkpoints in `paths` and return per-piece sums for each (base, new) pair in `pairs`.

    paths: checkpoint paths (see readers.open_checkpoint) or open readers. pairs: [(base_idx, new_idx)].
    crosses: [(pair_p, pair_q)] -> dot(update_p, update_q) per piece. workers: processes (1 = in this process).
    """
    readers = [open_checkpoint(p, dcp_prefix=dcp_prefix) for p in paths]
    pairs = [tuple(p) for p in pairs]
    crosses = [tuple(c) for c in crosses]
    thresholds = tuple(float(t) for t in thresholds)
    # Group pairs by base so each base chunk is read once per item (trajectory: one base, many news).
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    sorted_pairs = [pairs[i] for i in order]
    inv = {old: new for new, old in enumerate(order)}
    sorted_crosses = [(inv[p], inv[q]) for p, q in crosses]
    pieces, items, skipped = _plan(readers, chunk_elements, allow_unclassified)
    nf = CHANGED_0 + len(thresholds)
    stats = np.zeros((len(pieces), len(pairs), nf))
    cross = np.zeros((len(pieces), len(crosses)))
    n_workers = min(resolve_workers(workers), max(1, len(items)))
    bar = _progress_bar(progress, len(items))
    total_bytes = 0

    def merge(item, res):
        nonlocal total_bytes
        s, c, nb = res
        for k, (pi, _, _) in enumerate(item[3]):
            stats[pi] += s[k][inv_order]
            cross[pi] += c[k]
        total_bytes += nb
        bar.update(1)

    inv_order = [inv[i] for i in range(len(pairs))]  # sorted-pair column for each original pair
    if n_workers == 1:
        for item in items:
            merge(item, _item_stats(item, readers, sorted_pairs, sorted_crosses, thresholds))
    else:
        ctx = (readers, sorted_pairs, sorted_crosses, thresholds)
        with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(ctx,)) as ex:
            futs = {ex.submit(_worker_run, item): item for item in items}
            for fut in cf.as_completed(futs):
                merge(futs[fut], fut.result())
    bar.close()
    for r in readers:
        r.close()
    return CompareResult([r.path for r in readers], pairs, crosses, thresholds, pieces, stats, cross, skipped,
                         total_bytes, n_workers)


def _progress_bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="chunk", disable=not enabled, desc="tensors", dynamic_ncols=True)
