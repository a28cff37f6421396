"""Linear CKA between two checkpoints' representations (SPEC section 5), per layer.

Recipe: each input is encoded alone (batch size 1, no padding), hidden states of every layer are mean-pooled over
tokens -> one vector per (input, layer); per layer, linear CKA between the [n, D_a] and [n, D_b] matrices of the
two models. Bootstrap: `num_resamples` resamples of `resample_size` inputs drawn WITH replacement (seeded); per
resample the minimum over layers; report mean and std of that minimum (and per-layer mean/std).

linear_cka uses the feature form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred matrices, or the
equivalent Gram form tr(K L) / sqrt(tr(K K) tr(L L)) with K = X X^T when n < D (cheaper: n x n instead of D x D).
Both run in float64. cka_kernel_ref is the textbook O(n^2) HSIC formulation with the centring matrix H, kept as
the test reference.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

BUNDLED_INPUTS = {"prose": "prose.txt", "web": "web.txt", "math": "math.txt"}


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA of X [n, d1] and Y [n, d2] (rows = examples). Columns are centred here. Returns a float in [0, 1]."""
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"linear_cka needs X [n, d1] and Y [n, d2] with the same n (got {tuple(X.shape)}, "
                         f"{tuple(Y.shape)})")
    X = X.to(torch.float64)
    Y = Y.to(torch.float64)
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    n = X.shape[0]
    if n < max(X.shape[1], Y.shape[1]):
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), torch.sqrt((K * K).sum() * (L * L).sum())
    else:
        num = (Y.T @ X).pow(2).sum()
        den = torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y)
    return float(num / den) if den > 0 else float("nan")


def cka_kernel_ref(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Reference: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) / (n - 1)^2,
    K = X X^T, L = Y Y^T, H = I - 11^T / n. Uncentred inputs (H does the centring). O(n^2) memory."""
    X, Y = X.to(torch.float64), Y.to(torch.float64)
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return torch.trace(A @ H @ B @ H) / (n - 1) ** 2

    return float(hsic(K, L) / torch.sqrt(hsic(K, K) * hsic(L, L)))


def bundled_input_path(name: str) -> Path:
    return Path(str(resources.files("prism_fast.analysis") / "inputs" / BUNDLED_INPUTS[name]))


def load_inputs(spec: str, limit: int | None = None) -> tuple[str, list[str]]:
    """A bundled set name ("prose", "web", "math") or a text file with one input per line (blank lines skipped;
    a literal "\\n" inside a line stands for a newline). Returns (name, texts[:limit])."""
    if spec in BUNDLED_INPUTS:
        path, name = bundled_input_path(spec), spec
    else:
        path, name = Path(spec), Path(spec).stem
        if not path.is_file():
            raise ValueError(f"inputs {spec!r}: not a file and not a bundled set ({', '.join(BUNDLED_INPUTS)})")
    texts = [ln.replace("\\n", "\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if limit is not None:
        if len(texts) < limit:
            raise ValueError(f"{path} has {len(texts)} inputs, fewer than the {limit} asked; lower --num-inputs")
        texts = texts[:limit]
    return name, texts


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: list[str], *, max_tokens: int = 256, progress=None
                         ) -> torch.Tensor:
    """Mean-over-tokens hidden state of every layer: [n_texts, num_layers + 1, D] float32 (batch size 1 each)."""
    from prism_fast.analysis.modeling import encode, hidden_states

    rows = []
    for text in texts:
        hs = hidden_states(model, encode(tokenizer, text, max_tokens))
        rows.append(torch.stack([h[0].float().mean(0) for h in hs]))
        if progress is not None:
            progress.update(1)
    return torch.stack(rows)


def layer_cka(Ha: torch.Tensor, Hb: torch.Tensor) -> list[float]:
    """Per-layer CKA of pooled states Ha [n, L, Da], Hb [n, L, Db] -> L floats."""
    if Ha.shape[:2] != Hb.shape[:2]:
        raise ValueError(f"models differ in layer count or inputs: {tuple(Ha.shape)} vs {tuple(Hb.shape)}")
    return [linear_cka(Ha[:, i], Hb[:, i]) for i in range(Ha.shape[1])]


def bootstrap_min_cka(Ha, Hb, *, num_resamples: int = 20, resample_size: int = 100, seed: int = 0) -> dict:
    """Mean/std over resamples (with replacement) of min-over-layers CKA, plus per-layer mean/std."""
    g = np.random.default_rng(seed)
    n = Ha.shape[0]
    per = np.array([layer_cka(Ha[idx], Hb[idx])
                    for idx in (torch.from_numpy(g.integers(0, n, resample_size)) for _ in range(num_resamples))])
    mins = per.min(axis=1)
    return {"min_cka_mean": float(mins.mean()), "min_cka_std": float(mins.std(ddof=1)) if len(mins) > 1 else 0.0,
            "layer_mean": per.mean(0).tolist(), "layer_std": per.std(0, ddof=1).tolist() if len(per) > 1 else None,
            "argmin_layer": int(per.mean(0).argmin())}


def cka_compare(a, b, inputs=("prose", "web", "math"), *, num_inputs: int = 200, num_resamples: int = 20,
                resample_size: int = 100, max_tokens: int = 256, seed: int = 0, tokenizer=None,
                loader: str = "prism", dtype=torch.float32, progress: bool = False) -> dict:
    """CKA per layer between checkpoints a and b on each input set (and on all sets pooled).

    a, b: paths (HF dir or .gguf) or already-loaded models. inputs: bundled names or files, one input per line.
    tokenizer: a tokenizer or a path (default: a's tokenizer; both models must share the vocabulary).
    """
    from tqdm.auto import tqdm

    from prism_fast.analysis.modeling import load_model, load_tokenizer

    sets = [load_inputs(s, num_inputs) for s in inputs]
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer if tokenizer is not None else a, loader=loader)
    pooled = []
    total = 2 * sum(len(t) for _, t in sets)
    with tqdm(total=total, desc="encode", unit="input", disable=not progress, dynamic_ncols=True) as bar:
        for src in (a, b):
            model = load_model(src, dtype=dtype, loader=loader) if isinstance(src, (str, Path)) else src
            pooled.append([pooled_hidden_states(model, tokenizer, texts, max_tokens=max_tokens, progress=bar)
                           for _, texts in sets])
            del model
    result = {"command": "cka", "a": str(a), "b": str(b), "num_inputs": num_inputs, "max_tokens": max_tokens,
              "bootstrap": {"num_resamples": num_resamples, "resample_size": resample_size, "replace": True,
                            "seed": seed},
              "pooling": "mean over tokens of each layer's hidden state; each input encoded alone (batch 1, no pad)",
              "layers": "index 0 = embedding output, i = output of block i, last = after the final norm",
              "distributions": {}}
    names = [n for n, _ in sets]
    Ha_all = torch.cat(pooled[0]) if len(sets) > 1 else pooled[0][0]
    Hb_all = torch.cat(pooled[1]) if len(sets) > 1 else pooled[1][0]
    for name, Ha, Hb in [*zip(names, pooled[0], pooled[1]), *([("all", Ha_all, Hb_all)] if len(sets) > 1 else [])]:
        per_layer = layer_cka(Ha, Hb)
        result["distributions"][name] = {"n": Ha.shape[0], "layer_cka": per_layer, "min_cka": min(per_layer),
                                         **bootstrap_min_cka(Ha, Hb, num_resamples=num_resamples,
                                                             resample_size=min(resample_size, Ha.shape[0]),
                                                             seed=seed)}
    return result
