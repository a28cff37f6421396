"""python -m prism_fast.eval: evaluate a model on benchmarks (resumable), compare runs, log-likelihood MC checks.

    python -m prism_fast.eval --model PATH --bench NAME[=FILE] [--bench ...] --out DIR [--n N]
        [--max-new-tokens N] [--temperature T] [--top-p P] [--limit K] [--seed S] [--max-batch B]
        [--max-tokens-in-flight T] [--require-think] [--timeout S] [--no-progress]
    python -m prism_fast.eval compare DIR_A DIR_B ... [--labels base,mt,rl]
    python -m prism_fast.eval loglik --model PATH --bench NAME[=FILE] [--limit K]
See docs/eval.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prism_fast.entry import UserError, run_entry


def _run(argv: list[str]) -> int:
    from prism_fast.eval.benchmarks import BENCHMARKS  # noqa: PLC0415
    from prism_fast.eval.runner import EvalConfig, evaluate  # noqa: PLC0415
    p = argparse.ArgumentParser(prog="python -m prism_fast.eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF dir, .gguf, trainer run/checkpoint dir, or 'smollm2'")
    p.add_argument("--bench", action="append", required=True,
                   help=f"NAME[=FILE], repeatable; known: {', '.join(sorted(BENCHMARKS))}")
    p.add_argument("--out", required=True, type=Path, help="output directory (a rerun into it resumes)")
    p.add_argument("--n", type=int, help="samples per problem (default: per domain, paper values)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--limit", type=int, help="only the first K problems of each benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=64, help="decode rows of the engine")
    p.add_argument("--max-tokens-in-flight", type=int,
                   help="engine KV budget in tokens (rows x capacity); set it for 32k-token decoding")
    p.add_argument("--require-think", action="store_true", help="apply the RL <think> format gate to scores")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per verifier task")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    # EvalConfig checks every value's range (and --out) before anything is written
    res = evaluate(EvalConfig(model=a.model, benches=a.bench, out=a.out, n=a.n, max_new_tokens=a.max_new_tokens,
                              temperature=a.temperature, top_p=a.top_p, limit=a.limit, seed=a.seed,
                              max_batch=a.max_batch, max_tokens_in_flight=a.max_tokens_in_flight,
                              require_think=a.require_think, timeout_s=a.timeout,
                              progress=not a.no_progress))
    print((a.out / "results.md").read_text())
    print(f"avg_paper {res['avg_paper']['value']} | avg_six {res['avg_six']['value']} -> {a.out}/results.json")
    return 0


def _compare(argv: list[str]) -> int:
    from prism_fast.eval.report import compare_markdown  # noqa: PLC0415
    p = argparse.ArgumentParser(prog="python -m prism_fast.eval compare")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--labels", help="comma-separated column names (default: directory names)")
    a = p.parse_args(argv)
    print(compare_markdown(a.dirs, a.labels.split(",") if a.labels else None), end="")
    return 0


def _loglik(argv: list[str]) -> int:
    from prism_fast.eval.loglik import score_benchmark  # noqa: PLC0415
    from prism_fast.eval.model_io import load_for_eval  # noqa: PLC0415
    p = argparse.ArgumentParser(prog="python -m prism_fast.eval loglik")
    p.add_argument("--model", required=True)
    p.add_argument("--bench", required=True, help="a multiple-choice benchmark NAME[=FILE] (gpqa schema)")
    p.add_argument("--limit", type=int)
    p.add_argument("--out", type=Path, help="write the scores as JSON here")
    a = p.parse_args(argv)
    if a.out is not None and a.out.is_dir():
        raise UserError(f"--out {a.out} is a directory; name the JSON file to write, e.g. {a.out / 'loglik.json'}")
    model, tok, label = load_for_eval(a.model)
    res = {"model": label, **score_benchmark(model, tok, a.bench, limit=a.limit)}
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    if argv and argv[0] == "loglik":
        return _loglik(argv[1:])
    return _run(argv)


if __name__ == "__main__":
    sys.exit(run_entry(main))
