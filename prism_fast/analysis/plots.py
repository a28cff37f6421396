"""PNG plots of analysis results (matplotlib, Agg backend: no display needed). One function per command, each
returning the paths it wrote."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(x):
    return x if isinstance(x, (int, float)) and np.isfinite(x) else np.nan


def _bars(ax, labels, series: dict[str, list], ylabel, log=False):
    w = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + i * w - 0.4 + w / 2, [_num(v) for v in vals], w, label=name)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=7)


def _pair_label(p):
    return f"{Path(p['base']).name}->{Path(p['new']).name}"


def plot_weights(r: dict, out: Path) -> list[Path]:
    comps = list(dict.fromkeys(c for p in r["pairs"] for c in p["component"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _bars(axes[0], comps, {_pair_label(p): [p["component"].get(c, {}).get("rel_change") for c in comps]
                           for p in r["pairs"]}, "relative change ||dW||/||W||", log=True)
    _bars(axes[1], comps, {_pair_label(p): [p["component"].get(c, {}).get("changed_frac", {}).get("1%")
                                            for c in comps] for p in r["pairs"]}, "changed fraction (>1%)")
    paths = [_save(fig, out / "weights_components.png")]
    fig, ax = plt.subplots(figsize=(8, 4))
    for p in r["pairs"]:
        layers = [k for k in p["layer"] if k != "none"]
        for g in ("attention", "mlp", "mamba"):
            ys = [p["layer_group"].get(f"{l}/{g}", {}).get("rel_change") for l in layers]
            if any(y is not None for y in ys):
                ax.plot([int(l) for l in layers], [_num(y) if y is not None else np.nan for y in ys], marker="o",
                        label=f"{_pair_label(p)} {g}")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative change")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "weights_layers.png"))
    return paths


def plot_direction(r: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    keys = [*r["group"], *r["component"]]
    vals = [r["group"].get(k, r["component"].get(k))["cosine"] for k in keys]
    _bars(axes[0], keys, {"cosine": vals}, "cos(B - A, C - A)")
    layers = [k for k in r["layer"] if k != "none"]
    axes[1].plot([int(l) for l in layers], [_num(r["layer"][l]["cosine"]) for l in layers], marker="o")
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("cosine")
    return [_save(fig, out / "direction.png")]


def plot_trajectory(r: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for k, s in r["series"].items():
        style = "-" if k in ("attention", "mlp", "mamba", "all") else ":"
        axes[0].plot(r["steps"], [_num(v) for v in s["rel_change"]], style, marker=".", label=k)
        axes[1].plot(r["steps"], [_num(v) for v in s["changed_frac"]], style, marker=".", label=k)
    axes[0].set_ylabel("relative change from first")
    axes[1].set_ylabel(f"changed fraction (>{r['frac_threshold']})")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=6, ncol=2)
    return [_save(fig, out / "trajectory.png")]


def plot_cka(r: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for k, d in r["distributions"].items():
        axes[0].plot(range(len(d["layer_cka"])), d["layer_cka"], marker="o", label=k)
    axes[0].set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel("linear CKA")
    axes[0].legend(fontsize=7)
    names = list(r["distributions"])
    axes[1].bar(names, [r["distributions"][k]["min_cka_mean"] for k in names],
                yerr=[r["distributions"][k]["min_cka_std"] for k in names], capsize=4)
    axes[1].set_ylabel("min-over-layers CKA (bootstrap mean +- std)")
    lo = min(r["distributions"][k]["min_cka_mean"] - 2 * r["distributions"][k]["min_cka_std"] for k in names)
    axes[1].set_ylim(max(0.0, min(lo, 0.999)), 1.0 + 1e-4)  # identical models: avoid a zero-height range
    return [_save(fig, out / "cka.png")]


def plot_landscape(r: dict, out: Path) -> list[Path]:
    paths = []
    for key, mat in r["matrices"].items():
        m = np.array(mat, dtype=float)
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(r["betas"])), [f"{b:g}" for b in r["betas"]])
        ax.set_yticks(range(len(r["alphas"])), [f"{a:g}" for a in r["alphas"]])
        ax.set_xlabel("b (RL - MT)")
        ax.set_ylabel("a (MT - base)")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=7, color="w")
        for (a, b, name) in ((0.0, 0.0, "base"), (1.0, 0.0, "MT"), (1.0, 1.0, "RL")):
            if a in r["alphas"] and b in r["betas"]:
                ax.annotate(name, (r["betas"].index(b), r["alphas"].index(a)), xytext=(0, 9),
                            textcoords="offset points", ha="center", color="red", fontsize=8)
        fig.colorbar(im, ax=ax, label=key)
        paths.append(_save(fig, out / f"landscape_{key}.png"))
    return paths


PLOTTERS = {"weights": plot_weights, "direction": plot_direction, "trajectory": plot_trajectory, "cka": plot_cka,
            "landscape": plot_landscape}
