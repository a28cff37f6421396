"""Log-likelihood multiple-choice scoring, the lm-evaluation-harness protocol, for quick retention checks.

For each (context, continuation) request: the continuation's tokens are those of tokenizer(context +
continuation) after the context's tokens, with trailing whitespace of the context moved into the continuation
(lm-evaluation-harness `_encode_pair`); an empty context is prefixed with the EOS token. The score is the sum of
the continuation tokens' log-probs given everything before them, read with the model's fused log-prob path
(`model(ids, logprobs_of=targets)`, fp32, no [B, T, V] logits tensor). A multiple-choice item is right under
`acc` when its gold choice has the highest sum and under `acc_norm` when it has the highest sum divided by the
choice's length in characters (lm-evaluation-harness `multiple_choice` output type).
Requests are batched longest-first with right padding: causal attention means the padding after a sequence
never changes its log-probs.
"""
from __future__ import annotations

import torch

from prism_fast.entry import UserError


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    if not ctx:
        ctx = [tokenizer.eos_token_id]
    if not cont:
        raise ValueError(f"empty continuation after tokenization: {continuation!r}")
    return ctx, cont


@torch.no_grad()
def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int = 16) -> list[float]:
    """Sum of log p(continuation | context) per (context, continuation) request, in request order."""
    enc = [encode_pair(tokenizer, c, x) for c, x in requests]
    order = sorted(range(len(enc)), key=lambda i: -(len(enc[i][0]) + len(enc[i][1])))
    out = [0.0] * len(enc)
    device = next(model.parameters()).device
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        seqs = [enc[i][0] + enc[i][1] for i in idx]
        T = max(len(q) for q in seqs) - 1
        ids_BT = torch.zeros(len(idx), T, dtype=torch.long)
        tgt_BT = torch.zeros(len(idx), T, dtype=torch.long)
        for b, q in enumerate(seqs):
            ids_BT[b, :len(q) - 1] = torch.tensor(q[:-1])
            tgt_BT[b, :len(q) - 1] = torch.tensor(q[1:])
        lp_BT = model(ids_BT.to(device), logprobs_of=tgt_BT.to(device)).float().cpu()
        for b, i in enumerate(idx):
            n_ctx, n_cont = len(enc[i][0]), len(enc[i][1])
            out[i] = float(lp_BT[b, n_ctx - 1:n_ctx - 1 + n_cont].sum())
    return out


def multiple_choice(model, tokenizer, items: list[dict], *, batch_size: int = 16) -> dict:
    """items: {"context": str, "choices": [str], "gold": int}. Returns acc, acc_norm (percent) and per-item sums."""
    reqs = [(it["context"], ch) for it in items for ch in it["choices"]]
    sums = loglikelihood(model, tokenizer, reqs, batch_size=batch_size)
    acc = acc_norm = 0
    per_item, k = [], 0
    for it in items:
        ll = sums[k:k + len(it["choices"])]
        k += len(it["choices"])
        norm = [v / len(ch) for v, ch in zip(ll, it["choices"])]
        acc += max(range(len(ll)), key=ll.__getitem__) == it["gold"]
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == it["gold"]
        per_item.append(ll)
    return {"n": len(items), "acc": 100.0 * acc / len(items), "acc_norm": 100.0 * acc_norm / len(items),
            "loglik": per_item}


def score_benchmark(model, tokenizer, bench: str, *, limit: int | None = None) -> dict:
    """Log-likelihood MC scores of a GPQA-schema benchmark (choices as continuations of 'Question: ...
    Answer:', the ARC / Open LLM Leaderboard v1 format)."""
    from prism_fast.eval.benchmarks import load_benchmark, parse_bench_arg  # noqa: PLC0415
    name, file = parse_bench_arg(bench)
    problems = load_benchmark(name, file, limit=limit)
    if any("choices" not in p.meta for p in problems):
        raise UserError(f"loglik needs a multiple-choice benchmark (GPQA schema); {name} is not one")
    items = [{"context": f"Question: {p.meta['question']}\nAnswer:", "choices": [f" {c}" for c in p.meta["choices"]],
              "gold": "ABCD".index(p.reference)} for p in problems]
    res = multiple_choice(model, tokenizer, items)
    res.pop("loglik")
    return {"benchmark": name, "protocol": "lm-evaluation-harness loglikelihood, acc and acc_norm (chars)", **res}
