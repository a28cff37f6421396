"""Write an analysis result as <out>/<command>.json, <out>/<command>.md (markdown tables, aggregation rules stated)
and PNG plots (plots.py). JSON has no NaN/Infinity: they are written as the strings "nan" / "inf"."""
from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _f(x, prec=4):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{prec}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{prec}f}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _weights_md(r: dict) -> str:
    th = r["thresholds"]
    out = ["# Weight change\n", "Aggregation rules:\n", *[f"- {x}" for x in r["rules"]], ""]
    if len(r["pairs"]) > 1:
        out += ["## Side by side (relative change / changed fraction at 1%)\n"]
        comps = list(dict.fromkeys(c for p in r["pairs"] for c in [*p["group"], *p["component"]]))
        hdr = ["set"] + [f"{Path(p['base']).name} -> {Path(p['new']).name}" for p in r["pairs"]]
        rows = [[c] + [(f"{_f(p[k][c]['rel_change'])} / {_pct(p[k][c]['changed_frac'].get('1%'))}"
                        if c in p[k] else "-") for p in r["pairs"]]
                for c in comps for k in (("group",) if c in r["pairs"][0]["group"] else ("component",))]
        out += [_table(hdr, rows)]
    for p in r["pairs"]:
        out += [f"## {p['base']} -> {p['new']}\n"]
        for kind in ("group", "component"):
            rows = [[k, _f(v["numel"]), _f(v["rel_change"]), _f(v["mean_tensor_rel_change"]),
                     *[_pct(v["changed_frac"][t]) for t in th], _f(v["zero_old"]), _f(v["zero_old_changed"])]
                    for k, v in p[kind].items()]
            out += [f"### Per {kind}\n",
                    _table([kind, "elements", "rel change", "mean tensor rel", *[f"frac>{t}" for t in th],
                            "zero old", "zero old changed"], rows)]
        groups = sorted({k.split("/")[1] for k in p["layer_group"]}, key=["attention", "mlp", "mamba"].index)
        rows = [[layer, _f(v["rel_change"]), _pct(v["changed_frac"].get("1%")),
                 *[_f(p["layer_group"].get(f"{layer}/{g}", {}).get("rel_change")) for g in groups]]
                for layer, v in p["layer"].items()]
        out += ["### Per layer\n", _table(["layer", "rel change", "frac>1%", *[f"{g} rel" for g in groups]], rows)]
        rows = [[f"`{name}`", v["component"], _f(v["numel"]), _f(v["rel_change"]),
                 *[_pct(v["changed_frac"][t]) for t in th]] for name, v in p["tensor"].items()]
        out += ["<details><summary>Per matrix</summary>\n",
                _table(["tensor", "component", "elements", "rel change", *[f"frac>{t}" for t in th]], rows),
                "</details>\n"]
    if r.get("skipped"):
        out += ["## Not compared\n", *[f"- {k}: {', '.join(v[:20])}{' ...' if len(v) > 20 else ''}"
                                       for k, v in r["skipped"].items()], ""]
    return "\n".join(out)


def _direction_md(r: dict) -> str:
    out = ["# Update direction\n", f"cos(B - A, C - A) with A = {r['base']}, B = {r['b']}, C = {r['c']}.\n",
           "Aggregation rules:\n", *[f"- {x}" for x in r["rules"]], ""]
    for kind in ("group", "component", "layer"):
        rows = [[k, _f(v["cosine"]), _f(v["rel_change_b"]), _f(v["rel_change_c"])] for k, v in r[kind].items()]
        out += [f"## Per {kind}\n", _table([kind, "cosine", "rel change B", "rel change C"], rows)]
    return "\n".join(out)


def _trajectory_md(r: dict) -> str:
    out = ["# Trajectory\n", f"Cumulative change from {r['checkpoints'][0]}; front step = first step at which "
           f"{r['front_fraction']:.0%} of the final value is reached.\n",
           "Aggregation rules:\n", *[f"- {x}" for x in r["rules"]], ""]
    keys = list(r["series"])
    rows = [[s, *[_f(r["series"][k]["rel_change"][i]) for k in keys]] for i, s in enumerate(r["steps"])]
    out += ["## Relative change from the first checkpoint\n", _table(["step", *keys], rows)]
    rows = [[s, *[_pct(r["series"][k]["changed_frac"][i]) for k in keys]] for i, s in enumerate(r["steps"])]
    out += [f"## Changed fraction (>{r['frac_threshold']})\n", _table(["step", *keys], rows)]
    rows = [[k, v["front_step_rel"], v["front_step_frac"]] for k, v in r["series"].items()]
    out += ["## Front-loading\n", _table(["set", "step (rel change)", "step (changed frac)"], rows)]
    return "\n".join(out)


def _cka_md(r: dict) -> str:
    b = r["bootstrap"]
    out = ["# Linear CKA\n", f"A = {r['a']}, B = {r['b']}. {r['pooling']}. Layers: {r['layers']}. Bootstrap: "
           f"{b['num_resamples']} resamples of {b['resample_size']} inputs with replacement (seed {b['seed']}); "
           "min = minimum over layers.\n"]
    rows = [[k, v["n"], _f(v["min_cka"], 6), f"{_f(v['min_cka_mean'], 6)} +- {_f(v['min_cka_std'], 2)}",
             v["argmin_layer"]] for k, v in r["distributions"].items()]
    out += ["## Minimum over layers\n", _table(["inputs", "n", "min CKA (all n)", "bootstrap min mean +- std",
                                                "argmin layer"], rows)]
    names = list(r["distributions"])
    n_layers = len(next(iter(r["distributions"].values()))["layer_cka"])
    rows = [[i, *[_f(r["distributions"][k]["layer_cka"][i], 6) for k in names]] for i in range(n_layers)]
    out += ["## Per layer\n", _table(["layer", *names], rows)]
    return "\n".join(out)


def _landscape_md(r: dict) -> str:
    out = ["# Landscape\n", f"{r['formula']}. Score: {r['score']}.\n"]
    for key, mat in r["matrices"].items():
        rows = [[_f(a), *[_f(v) for v in row]] for a, row in zip(r["alphas"], mat)]
        out += [f"## {key} (rows a, columns b)\n", _table(["a \\ b", *[_f(b) for b in r["betas"]]], rows)]
    return "\n".join(out)


_MD = {"weights": _weights_md, "direction": _direction_md, "trajectory": _trajectory_md, "cka": _cka_md,
       "landscape": _landscape_md}


def write_report(result: dict, out_dir, *, plots: bool = True) -> dict[str, Path]:
    """Write JSON + markdown (+ PNGs) for a result dict; returns {kind: path}."""
    from prism_fast.analysis import plots as plots_mod

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = result["command"]
    paths = {"json": out / f"{cmd}.json", "md": out / f"{cmd}.md"}
    paths["json"].write_text(json.dumps(_clean(result), indent=1))
    paths["md"].write_text(_MD[cmd](result))
    if plots:
        for i, p in enumerate(plots_mod.PLOTTERS[cmd](result, out)):
            paths[f"png{i}"] = p
    return paths
