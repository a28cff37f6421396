"""Scores: avg@n, the unbiased pass@k estimator, per-benchmark summaries and the paper's aggregates.

A sample counts as solved when its verifier score is 1 (math, multiple choice: the answer is right; code: every
test passes, as LiveCodeBench and Codeforces count it; the rewards' fractional code score is kept separately as
`mean_score`). All reported scores are percentages.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with n samples of which c are
solved, pass@k = 1 - C(n - c, k) / C(n, k), the probability that k samples drawn without replacement from the n
contain a solved one; it is unbiased for the pass@k of a model that draws k fresh samples. pass@1 = c / n, so
pass@1 equals avg@n (the paper's avg@64 for math). Computed as a running product (no big binomials).

Aggregates (SPEC section 4): math = mean(AIME24, AIME25, MATH500 present), code = mean(LCB, CF present),
gpqa = GPQA-Diamond; `avg_paper` = mean of the domains present (the paper's AVG), `avg_six` = plain mean over the
benchmarks present (the project page's AVG). Both carry the list of what they average, so a partial set is
never mistaken for the paper's full number.
"""
from __future__ import annotations

from collections.abc import Sequence

SOLVED = 1.0 - 1e-9


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c solved (0 <= c <= n, 1 <= k <= n), as a fraction in [0, 1]."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_ks(n: int) -> list[int]:
    """Powers of two up to n, plus n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def summarize(scores_per_problem: Sequence[Sequence[float]], ks: Sequence[int] | None = None) -> dict:
    """Per-benchmark summary from each problem's per-sample verifier scores (all problems the same n).

    Returns n_problems, n_samples (per problem), avg@n (percent, mean over problems of the solved fraction),
    pass@k for each k (percent, mean over problems of the unbiased estimator) and mean_score (percent, mean
    verifier score, which gives partial credit to code)."""
    if not scores_per_problem:
        raise ValueError("summarize needs at least one problem")
    ns = {len(s) for s in scores_per_problem}
    if len(ns) != 1 or 0 in ns:
        raise ValueError(f"every problem needs the same, nonzero number of samples; got {sorted(ns)}")
    n = ns.pop()
    solved = [sum(x >= SOLVED for x in s) for s in scores_per_problem]
    P = len(scores_per_problem)
    out = {"n_problems": P, "n_samples": n, "avg@n": 100.0 * sum(c / n for c in solved) / P}
    for k in ks or default_ks(n):
        if k <= n:
            out[f"pass@{k}"] = 100.0 * sum(pass_at_k(n, c, k) for c in solved) / P
    out["mean_score"] = 100.0 * sum(sum(s) / n for s in scores_per_problem) / P
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def aggregate(per_bench: dict[str, float], groups: dict[str, str]) -> dict:
    """Paper aggregates from each benchmark's headline score (avg@n, percent).

    per_bench: {benchmark: score} of the benchmarks that enter the aggregates; groups: {benchmark: "math" |
    "code" | "gpqa"}. Returns {"domains": {group: {"value", "benchmarks"}}, "avg_paper": {...}, "avg_six": {...}}
    with None values when nothing is present."""
    domains: dict[str, dict] = {}
    for name, score in per_bench.items():
        domains.setdefault(groups[name], {"benchmarks": [], "_scores": []})
        domains[groups[name]]["benchmarks"].append(name)
        domains[groups[name]]["_scores"].append(score)
    domains = {g: {"value": _mean(d.pop("_scores")), "benchmarks": d["benchmarks"]}
               for g, d in sorted(domains.items())}
    present = list(domains)
    return {
        "domains": domains,
        "avg_paper": {"value": _mean([d["value"] for d in domains.values()]) if domains else None,
                      "domains": present,
                      "definition": "mean of the domain scores present (math, code, gpqa); paper SPEC 4 AVG"},
        "avg_six": {"value": _mean(list(per_bench.values())) if per_bench else None,
                    "benchmarks": list(per_bench),
                    "definition": "plain mean over the benchmarks present; project-page AVG"},
    }
