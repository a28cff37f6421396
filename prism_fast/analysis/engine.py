"""Streaming engine behind `weights`, `direction` and `trajectory`: per-element statistics of checkpoint
differences, computed one row-chunk of one tensor at a time, optionally in several worker processes.

A job is a list of checkpoints, a list of `pairs` (base index, new index) and optional `crosses` (pair p, pair q)
whose update dot products are wanted (update direction). Work is cut into items = (tensor, row range, pieces):
safetensors tensors are read by row chunks of <= `chunk_elements` elements (so even a 2.7 GB embedding never sits
in memory whole), DCP tensors whole. Per item and pair we keep only sums, so the merge is exact addition.

Memory per worker: the item's tensors in their stored dtype (base + new; + the other checkpoints of a cross, 3
for `direction`), and an fp32 working set of ~9 bytes per element of one sub-range of <= `chunk_elements` (|old|,
diff, a bool mask). For safetensors an item is itself <= chunk_elements, so peak ~ 13 bytes x chunk_elements for
bf16 (~55 MB at the 4M default); for DCP an item is a whole tensor in stored dtype. Nothing scales with model size.

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
DEFAULT_CHUNK_ELEMENTS = 1 << 22  # 4M elements: ~55 MB of buffers per worker for bf16 (module docstring)


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
    worker_cpu_seconds: float = 0.0  # summed over worker processes (0 when run in-process)
    worker_peak_rss_mb: float = 0.0  # largest worker


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


class _Workspace:
    """Per-process pool of flat buffers, grown on demand and reused by every work item. Fresh 16-64 MB
    allocations per item made glibc keep freed blocks around (RSS crept up to 2x the working set)."""

    def __init__(self):
        self.bufs: dict = {}

    def get(self, key, numel: int, dtype: torch.dtype) -> torch.Tensor:
        b = self.bufs.get(key)
        if b is None or b.numel() < numel or b.dtype != dtype:
            self.bufs[key] = None  # free the old one before allocating the bigger one
            b = self.bufs[key] = torch.empty(numel, dtype=dtype)
        return b[:numel]


_WS = _Workspace()


def _sub_ranges(views, chunk):
    """Split each piece's flat element range into sub-ranges of <= chunk elements: (piece k, lo, hi)."""
    for k, lo, hi in views:
        for c0 in range(lo, hi, chunk):
            yield k, c0, min(hi, c0 + chunk)


def _item_stats(item, readers, pairs, crosses, thresholds, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """Stats of one work item: (stats [k, n_pairs, F], cross [k, n_crosses]) for its k pieces, and bytes read.

    Tensors are held in their stored dtype (bf16: 2 bytes/element); fp32 copies exist only for one sub-range of
    <= chunk_elements at a time, so a whole DCP tensor costs its stored size plus a bounded fp32 working set.
    """
    name, r0, r1, pieces = item
    out = np.zeros((len(pieces), len(pairs), CHANGED_0 + len(thresholds)))
    cross_out = np.zeros((len(pieces), len(crosses)))
    keep = {ci for p, q in crosses for ci in (*pairs[p], *pairs[q])}  # checkpoints the crosses re-read
    native: dict[int, torch.Tensor] = {}
    nbytes = 0
    thresholds_f32 = [np.float32(t) for t in thresholds]  # compare in fp32, like the ratio
    row_elems = 1
    for s_ in readers[0].shape(name)[1:]:
        row_elems *= s_
    views = [(k, lo * row_elems, hi * row_elems) for k, (_, lo, hi) in enumerate(pieces)]

    def load(ci, slot):
        nonlocal nbytes
        if ci not in native:
            r = readers[ci]
            buf = None
            if r.row_sliceable and ci not in keep:  # pooled read buffer: no allocator churn per item
                rows = (r1 - r0) if r0 is not None else (r.shape(name)[0] if r.shape(name) else 1)
                buf = _WS.get(("read", slot), rows * row_elems * r.dtype(name).itemsize, torch.uint8)
            t = r.read(name, r0, r1, out=buf).reshape(-1)
            nbytes += t.numel() * t.element_size()
            native[ci] = (t, None if buf is None else slot)
        return native[ci][0]

    for pi, (bi, ni) in enumerate(pairs):
        # Keep only this pair's base (unless it sits in the "new" slot, which the read below overwrites) and the
        # cross checkpoints. Pairs are sorted by base, so a dropped base is never needed again.
        for ci in [c for c, (_, slot) in native.items() if c not in keep and (c != bi or slot == "new")]:
            del native[ci]
        base, new = load(bi, "base"), load(ni, "new")
        for k, lo, hi in _sub_ranges(views, chunk_elements):
            n = hi - lo
            # Pooled fp32 working set, never aliasing the native tensors. torch converts from the stored dtype (numpy
            # has no bf16); numpy does the elementwise passes: on CPU its compare + count_nonzero are ~5x faster
            # than torch's (0.3 vs 1.4 ms per M elements on 1 core).
            o = _WS.get("a", n, torch.float32).copy_(base[lo:hi]).numpy()
            d = _WS.get("b", n, torch.float32).copy_(new[lo:hi]).numpy()
            mask = _WS.get("mask", n, torch.bool).numpy()
            np.subtract(d, o, out=d)
            np.abs(o, out=o)
            s = out[k, pi]
            s[NUMEL] += n
            s[DIFF_SQ] += float(np.dot(d, d))
            s[OLD_SQ] += float(np.dot(o, o))  # ||old||^2 = ||abs(old)||^2
            n_zero = int(np.count_nonzero(np.equal(o, 0, out=mask)))
            s[ZERO_OLD] += n_zero
            np.abs(d, out=d)
            with np.errstate(divide="ignore", invalid="ignore"):  # x/0 = inf (changed), 0/0 = nan (unchanged)
                ratio = np.divide(d, o, out=d)
            if n_zero:
                s[ZERO_CHANGED] += int(np.count_nonzero(np.isinf(ratio, out=mask)))
            for t_i, t in enumerate(thresholds_f32):
                s[CHANGED_0 + t_i] += int(np.count_nonzero(np.greater(ratio, t, out=mask)))
    for c_i, (p, q) in enumerate(crosses):
        (bp, np_), (bq, nq) = pairs[p], pairs[q]
        for k, lo, hi in _sub_ranges(views, chunk_elements):
            n = hi - lo
            tmp = _WS.get("c", n, torch.float32)  # third fp32 buffer: cross pass only (direction)
            dp = _WS.get("a", n, torch.float32).copy_(load(np_, "x")[lo:hi]).sub_(tmp.copy_(load(bp, "x")[lo:hi]))
            dq = _WS.get("b", n, torch.float32).copy_(load(nq, "x")[lo:hi]).sub_(tmp.copy_(load(bq, "x")[lo:hi]))
            cross_out[k, c_i] += torch.dot(dp, dq).item()
    return out, cross_out, nbytes


_CTX = None


def _worker_init(ctx):
    global _CTX
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe
    readers, *rest = ctx
    _CTX = ([cached_reader(r) for r in readers], *rest)


def _worker_run(item):
    """Stats of one item + this worker's (pid, CPU seconds so far, peak RSS MiB): forkserver workers are not our
    children, so getrusage(RUSAGE_CHILDREN) in the parent cannot see them."""
    import resource

    out = _item_stats(item, *_CTX)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (*out, (os.getpid(), ru.ru_utime + ru.ru_stime, _vm_hwm_mb()))


def _vm_hwm_mb() -> float:
    """Peak RSS of this process in MiB (VmHWM; getrusage's ru_maxrss also counts the parent's pages at fork)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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

    usage: dict[int, tuple[float, float]] = {}  # worker pid -> (CPU seconds, peak RSS MiB), latest report

    def merge(item, res):
        nonlocal total_bytes
        s, c, nb = res[:3]
        if len(res) > 3:
            pid, cpu, hwm = res[3]
            usage[pid] = (cpu, hwm)
        for k, (pi, _, _) in enumerate(item[3]):
            stats[pi] += s[k][inv_order]
            cross[pi] += c[k]
        total_bytes += nb
        bar.update(1)

    inv_order = [inv[i] for i in range(len(pairs))]  # sorted-pair column for each original pair
    if n_workers == 1:
        for item in items:
            merge(item, _item_stats(item, readers, sorted_pairs, sorted_crosses, thresholds, chunk_elements))
    else:
        ctx = (readers, sorted_pairs, sorted_crosses, thresholds, chunk_elements)
        # forkserver: a fresh server process imports torch once and forks the workers (spawn would import it in
        # every worker, ~2 CPU-s each; plain fork from a process that may have run OpenMP code is unsafe).
        mp_ctx = mp.get_context("forkserver")
        mp_ctx.set_forkserver_preload(["prism_fast.analysis.engine"])
        with cf.ProcessPoolExecutor(n_workers, mp_context=mp_ctx, initializer=_worker_init, initargs=(ctx,)) as ex:
            futs = {ex.submit(_worker_run, item): item for item in items}
            for fut in cf.as_completed(futs):
                merge(futs[fut], fut.result())
    bar.close()
    for r in readers:
        r.close()
    return CompareResult([r.path for r in readers], pairs, crosses, thresholds, pieces, stats, cross, skipped,
                         total_bytes, n_workers, sum(u[0] for u in usage.values()),
                         max((u[1] for u in usage.values()), default=0.0))


def _progress_bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="chunk", disable=not enabled, desc="tensors", dynamic_ncols=True)
