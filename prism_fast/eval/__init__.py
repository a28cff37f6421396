"""prism_fast.eval: benchmark loaders, decoding through the rollout engine, scoring, aggregates, reports.

    python -m prism_fast.eval --model PATH --bench NAME[=FILE] ... --out DIR      (DESIGN section 11)
    python -m prism_fast.eval compare DIR_A DIR_B ...
    python -m prism_fast.eval loglik --model PATH --bench science_standin

Modules: loaders (public schemas -> Problem), benchmarks (the registry others extend), metrics (avg@n, pass@k,
aggregates), runner (the resumable loop), store (samples.jsonl + run_config.json), report (results.md,
compare), loglik (lm-evaluation-harness style MC scoring), paper (the paper's headline numbers). See docs/eval.md.
"""
from prism_fast.eval.benchmarks import BENCHMARKS, BenchmarkSpec, Decoding, load_benchmark, register
from prism_fast.eval.loaders import Problem
from prism_fast.eval.metrics import aggregate, pass_at_k, summarize

__all__ = ["BENCHMARKS", "BenchmarkSpec", "Decoding", "Problem", "aggregate", "load_benchmark", "pass_at_k",
           "register", "summarize"]
