"""Loss landscape on the plane through three checkpoints (SPEC section 5):
W(a, b) = W_base + a (W_MT - W_base) + b (W_RL - W_MT), so (0, 0) = base, (1, 0) = MT, (1, 1) = RL.

What is unusual: the three checkpoints are never held in memory together. One model is built (from `base`);
for every grid point each parameter is recomputed from the three checkpoints read tensor by tensor
(W = (1 - a) W_base + (a - b) W_MT + b W_RL, in fp32) and copied into the model in place. Memory: one model +
three tensors; cost: reading the three checkpoints once per grid point (page cache makes repeats cheap).

The score at each point is a user function `fn(model, tokenizer) -> float | dict[str, float]`
("module:function" on the CLI). The default is the mean next-token loss (nats/token, token-weighted) on a
held-out text file, so the command works before RL and evaluation exist; pass-rate scoring (SPEC: MATH500,
8 samples, T 0.6) plugs in the same way.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from prism_fast.analysis.readers import open_checkpoint

DEFAULT_GRID = (-0.5, 0.0, 0.5, 1.0, 1.5)


def next_token_loss(model, tokenizer, texts: list[str], *, max_tokens: int = 256) -> float:
    """Token-weighted mean next-token cross-entropy (nats) over texts, each encoded alone."""
    from prism_fast.analysis.modeling import encode, logits

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = encode(tokenizer, text, max_tokens)
            if ids.shape[1] < 2:
                continue
            lg = logits(model, ids)[0, :-1].float()
            total += torch.nn.functional.cross_entropy(lg, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    if count == 0:
        raise ValueError("no input has 2 or more tokens; the loss is undefined")
    return total / count


def load_score_fn(spec: str):
    """"package.module:function" -> the function."""
    if ":" not in spec:
        raise ValueError(f"score function {spec!r} must look like 'package.module:function'")
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn)


@torch.no_grad()
def set_interpolated(model, readers, a: float, b: float) -> int:
    """Write W(a, b) into model's parameters/buffers that the checkpoints hold; returns how many were set."""
    base, mt, rl = readers
    coef = (1.0 - a, a - b, b)
    n = 0
    held = set(base.names())
    for name, t in model.state_dict(keep_vars=True).items():
        if name not in held:
            continue  # tied lm_head (not saved) shares the embedding; rotary buffers are not checkpointed
        w = coef[0] * base.read(name).float()
        for c, r in zip(coef[1:], (mt, rl)):
            if c != 0.0:
                w.add_(r.read(name).float(), alpha=c)
        t.data.copy_(w.view_as(t))
        n += 1
    return n


def landscape(base, mt, rl, *, alphas=DEFAULT_GRID, betas=DEFAULT_GRID, score_fn=None, eval_file=None,
              num_eval: int = 64, max_tokens: int = 256, tokenizer=None, loader: str = "prism",
              dtype=torch.float32, progress: bool = False) -> dict:
    """Score every (a, b) grid point. base/mt/rl: HF dirs (or DCP dirs; the model is built from base, which must
    then be an HF dir). score_fn: callable(model, tokenizer) or "module:function"; default: next-token loss on
    eval_file (default: the bundled prose set) over its first num_eval inputs."""
    from tqdm.auto import tqdm

    from prism_fast.analysis.cka import load_inputs
    from prism_fast.analysis.modeling import load_model, load_tokenizer

    readers = [open_checkpoint(p) for p in (base, mt, rl)]
    names = set(readers[0].names())
    for r in readers[1:]:
        if set(r.names()) != names:
            raise ValueError(f"{r.path} and {readers[0].path} hold different tensors; the landscape needs three "
                             "checkpoints of the same architecture")
    model = load_model(base, dtype=dtype, loader=loader)
    tok = load_tokenizer(tokenizer or base, loader=loader) if not hasattr(tokenizer, "encode") else tokenizer
    if score_fn is None:
        eval_name, texts = load_inputs(str(eval_file) if eval_file else "prose")
        texts = texts[:num_eval]
        score_name = f"next_token_loss({eval_name}, n={len(texts)})"

        def score_fn(m, t):
            return {"next_token_loss": next_token_loss(m, t, texts, max_tokens=max_tokens)}
    else:
        score_name = score_fn if isinstance(score_fn, str) else getattr(score_fn, "__name__", "score")
        score_fn = load_score_fn(score_fn) if isinstance(score_fn, str) else score_fn
    grid: list[dict] = []
    with tqdm(total=len(alphas) * len(betas), desc="grid", disable=not progress, dynamic_ncols=True) as bar:
        for a in alphas:
            for b in betas:
                set_interpolated(model, readers, float(a), float(b))
                s = score_fn(model, tok)
                scores = s if isinstance(s, dict) else {"score": float(s)}
                grid.append({"a": float(a), "b": float(b), **{k: float(v) for k, v in scores.items()}})
                bar.update(1)
    for r in readers:
        r.close()
    keys = [k for k in grid[0] if k not in ("a", "b")]
    mats = {k: np.array([g[k] for g in grid]).reshape(len(alphas), len(betas)).tolist() for k in keys}
    return {"command": "landscape", "base": str(base), "mt": str(mt), "rl": str(rl),
            "formula": "W(a, b) = W_base + a (W_MT - W_base) + b (W_RL - W_MT); (0,0)=base, (1,0)=MT, (1,1)=RL",
            "score": score_name, "alphas": [float(a) for a in alphas], "betas": [float(b) for b in betas],
            "grid": grid, "matrices": mats}
