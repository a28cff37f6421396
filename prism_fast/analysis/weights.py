"""Weight change, update direction and trajectories between checkpoints (SPEC section 5), as JSON-ready dicts.

Aggregation rules (also written into every result under "rules", so reports never leave them implicit):
- relative change of a set of tensors = sqrt(sum ||W_new - W_old||_F^2) / sqrt(sum ||W_old||_F^2): the set is
  treated as one concatenated vector (a big matrix weighs more than a small one). `mean_tensor_rel_change` is the
  unweighted mean of the per-tensor values, reported beside it.
- changed fraction at threshold t = (number of elements with |w_new - w_old| > t * |w_old|) / (number of
  elements): element-weighted over the set. Zero guard: an element with w_old == 0 counts as changed at every
  threshold iff w_new != 0 (its relative change is infinite); counts of such elements are reported.
- components: see components.py (fused matrices are split into row pieces); groups attention/mlp/mamba/all are
  unions of components; per layer = all tensors named `layers.{i}.`; non-layer tensors (embeddings, final norm,
  LM head) are under layer "none".
- update direction: cos(dB, dC) = sum <dB, dC> / sqrt(sum ||dB||^2 * sum ||dC||^2) over the set (one vector).
"""
from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

import numpy as np

from prism_fast.analysis.components import COMPONENTS, GROUPS, groups_of
from prism_fast.analysis.engine import (CHANGED_0, DIFF_SQ, NUMEL, OLD_SQ, ZERO_CHANGED, ZERO_OLD,
                                        DEFAULT_THRESHOLDS, CompareResult, compare)

RULES = [" ".join(r.split()) for r in __doc__.split("Aggregation rules")[1].split("\n- ")[1:]]


def threshold_label(t: float) -> str:
    return f"{t * 100:g}%"


def _summary(vec: np.ndarray, thresholds, tensor_rels: list[float] | None = None) -> dict:
    numel = int(vec[NUMEL])
    rel = math.sqrt(float(vec[DIFF_SQ]) / vec[OLD_SQ]) if vec[OLD_SQ] > 0 else (0.0 if vec[DIFF_SQ] == 0 else math.inf)
    out = {
        "numel": numel,
        "rel_change": rel,
        "changed_frac": {threshold_label(t): float(vec[CHANGED_0 + i]) / max(numel, 1) for i, t in enumerate(thresholds)},
        "zero_old": int(vec[ZERO_OLD]),
        "zero_old_changed": int(vec[ZERO_CHANGED]),
    }
    if tensor_rels is not None:
        out["mean_tensor_rel_change"] = float(np.mean(tensor_rels)) if tensor_rels else None
        out["num_tensors"] = len(tensor_rels)
    return out


def _keys_of(piece):
    """Aggregation keys a piece contributes to: ("component", c), ("group", g), ("layer", l)."""
    layer = "none" if piece.layer is None else str(piece.layer)
    keys = [("component", piece.component), ("layer", layer)]
    keys += [("group", g) for g in groups_of(piece.component)]
    keys += [("layer_group", f"{layer}/{g}") for g in groups_of(piece.component) if g != "all"]
    return keys


def _sum_by(res: CompareResult, values: np.ndarray):
    """Sum `values` [n_pieces, ...] over pieces into {kind: {key: sum}} plus a per-tensor sum."""
    acc: dict[str, dict[str, np.ndarray]] = {"tensor": {}}
    for k, piece in enumerate(res.pieces):
        acc["tensor"][piece.name] = acc["tensor"].get(piece.name, 0) + values[k]
        for kind, key in _keys_of(piece):
            d = acc.setdefault(kind, {})
            d[key] = d.get(key, 0) + values[k]
    return acc


def _ordered(d: dict, kind: str) -> dict:
    if kind == "component":
        return {c: d[c] for c in COMPONENTS if c in d}
    if kind == "group":
        return {g: d[g] for g in (*GROUPS, "all") if g in d}
    if kind == "layer":
        return dict(sorted(d.items(), key=lambda kv: (kv[0] == "none", int(kv[0]) if kv[0] != "none" else 0)))
    return d


def summarize_pair(res: CompareResult, pair: int) -> dict:
    """Per tensor / component / group / layer / layer x group summaries of one (base, new) pair."""
    acc = _sum_by(res, res.stats[:, pair, :])
    tensor = {n: _summary(v, res.thresholds) for n, v in acc["tensor"].items()}
    rels: dict[tuple[str, str], list[float]] = {}
    by_name: dict[str, list] = {}
    for p in res.pieces:
        by_name.setdefault(p.name, []).append(p)
    for name, s in tensor.items():
        pieces = by_name[name]
        s["component"] = "+".join(dict.fromkeys(p.component for p in pieces))
        s["layer"] = pieces[0].layer
        for kind, key in {kk for p in pieces for kk in _keys_of(p)}:
            rels.setdefault((kind, key), []).append(s["rel_change"])
    out = {"base": res.paths[res.pairs[pair][0]], "new": res.paths[res.pairs[pair][1]]}
    for kind in ("component", "group", "layer", "layer_group"):
        out[kind] = _ordered({k: _summary(v, res.thresholds, rels.get((kind, k), []))
                              for k, v in acc.get(kind, {}).items()}, kind)
    out["tensor"] = tensor
    return out


def _meta(res: CompareResult) -> dict:
    return {"thresholds": [threshold_label(t) for t in res.thresholds], "rules": RULES, "skipped": res.skipped,
            "bytes_read": res.bytes_read, "workers": res.workers, "worker_cpu_seconds": res.worker_cpu_seconds,
            "worker_peak_rss_mb": res.worker_peak_rss_mb}


def weight_change(base, new, *, thresholds=DEFAULT_THRESHOLDS, **kw) -> dict:
    """Relative change and changed fractions of each `new` checkpoint against `base`.

    base: one checkpoint (shared) or a list with one base per new checkpoint (e.g. Base->RL next to MT->RL).
    new: one checkpoint or a list. Extra keywords go to engine.compare (workers, chunk_elements, progress, ...).
    Returns {"pairs": [summary per pair], "thresholds", "rules", "skipped", ...}.
    """
    bases = list(base) if isinstance(base, (list, tuple)) else [base]
    news = list(new) if isinstance(new, (list, tuple)) else [new]
    if len(bases) not in (1, len(news)):
        raise ValueError(f"give one base for all new checkpoints or one per new checkpoint "
                         f"(got {len(bases)} bases for {len(news)} new)")
    if len(bases) == 1:
        paths, pairs = [bases[0], *news], [(0, i + 1) for i in range(len(news))]
    else:
        paths = [*bases, *news]
        pairs = [(i, len(bases) + i) for i in range(len(news))]
    res = compare(paths, pairs, thresholds=thresholds, **kw)
    return {"command": "weights", "pairs": [summarize_pair(res, i) for i in range(len(pairs))], **_meta(res)}


def update_direction(base, b, c, *, thresholds=DEFAULT_THRESHOLDS, **kw) -> dict:
    """Cosine similarity of the updates (b - base) and (c - base), overall and per tensor/component/group/layer."""
    res = compare([base, b, c], [(0, 1), (0, 2)], crosses=[(0, 1)], thresholds=thresholds, **kw)
    dots = _sum_by(res, res.cross[:, 0])
    n1 = _sum_by(res, res.stats[:, 0, DIFF_SQ])
    n2 = _sum_by(res, res.stats[:, 1, DIFF_SQ])
    old = _sum_by(res, res.stats[:, 0, OLD_SQ])

    def cos(kind, key):
        den = math.sqrt(n1[kind][key] * n2[kind][key])
        return {"cosine": float(dots[kind][key] / den) if den > 0 else None,
                "rel_change_b": math.sqrt(n1[kind][key] / old[kind][key]) if old[kind][key] > 0 else None,
                "rel_change_c": math.sqrt(n2[kind][key] / old[kind][key]) if old[kind][key] > 0 else None}

    out = {"command": "direction", "base": res.paths[0], "b": res.paths[1], "c": res.paths[2]}
    for kind in ("component", "group", "layer", "tensor"):
        out[kind] = _ordered({k: cos(kind, k) for k in dots.get(kind, {})}, kind)
    return {**out, **_meta(res)}


_STEP_RE = re.compile(r"(\d+)(?!.*\d)")


def list_checkpoints(spec) -> list[str]:
    """Ordered checkpoint paths from a directory of checkpoints, a glob, or a list.

    Order: by the last integer in each name (step-20 < step-400 < step-960), else by name.
    """
    if isinstance(spec, (list, tuple)):
        paths = [str(p) for p in spec]
    elif os.path.isdir(spec):  # a directory of checkpoint directories (step-20/, step-40/, ...)
        # *.tmp: a trainer checkpoint whose write was interrupted (no COMPLETE marker); never analysed
        paths = [str(p) for p in sorted(Path(spec).iterdir()) if p.is_dir() and not p.name.endswith(".tmp")]
    else:
        paths = sorted(glob.glob(str(spec)))
    if len(paths) < 2:
        raise ValueError(f"trajectory needs at least 2 checkpoints; {spec!r} gave {paths}. Pass a directory whose "
                         "subdirectories are checkpoints (e.g. step-20, step-40, ...) or a quoted glob")

    def key(p):
        m = _STEP_RE.search(Path(p).name)
        return (0, int(m.group(1)), p) if m else (1, 0, p)

    return sorted(paths, key=key)


def step_of(path: str, default: int) -> int:
    m = _STEP_RE.search(Path(path).name)
    return int(m.group(1)) if m else default


def trajectory(ckpts, *, thresholds=DEFAULT_THRESHOLDS, front_fraction: float = 0.8, **kw) -> dict:
    """Cumulative change from the first checkpoint to each later one, per component/group, and front-loading:
    the first step at which the relative change (and the changed fraction at 1%, or the middle threshold) reached
    `front_fraction` of its final value."""
    paths = list_checkpoints(ckpts)
    res = compare(paths, [(0, k) for k in range(1, len(paths))], thresholds=thresholds, **kw)
    steps = [step_of(p, i) for i, p in enumerate(paths)]
    per = [summarize_pair(res, i) for i in range(len(paths) - 1)]
    t_key = threshold_label(0.01) if 0.01 in res.thresholds else threshold_label(res.thresholds[len(res.thresholds) // 2])
    series: dict[str, dict] = {}
    for kind in ("group", "component"):
        for key in per[-1][kind]:
            rel = [0.0] + [p[kind][key]["rel_change"] for p in per]
            frac = [0.0] + [p[kind][key]["changed_frac"][t_key] for p in per]
            series[key] = {"rel_change": rel, "changed_frac": frac,
                           "front_step_rel": _front_step(steps, rel, front_fraction),
                           "front_step_frac": _front_step(steps, frac, front_fraction)}
    return {"command": "trajectory", "checkpoints": paths, "steps": steps, "front_fraction": front_fraction,
            "frac_threshold": t_key, "series": series, "per_checkpoint": per, **_meta(res)}


def _front_step(steps, values, fraction):
    final = values[-1]
    if not final:
        return None
    for s, v in zip(steps, values):
        if v >= fraction * final:
            return s
    return steps[-1]
