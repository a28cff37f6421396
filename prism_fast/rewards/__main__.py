"""python -m prism_fast.rewards score --domain D --input FILE.jsonl [--out FILE] [--no-think] [--timeout S]

Reads one JSON object per line, {"response": str, "reference": ..., "truncated": bool (optional)}, writes one
{"reward", "correct", "reason"} per line in input order (stdout without --out), and a summary line to stderr.
Exit 0 when every line was scored; a malformed line stops it before any scoring with `error: FILE:LINE: ...`
and exit 2. Blank lines are skipped.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from prism_fast.entry import UserError, run_entry
from prism_fast.rewards.items import DOMAINS, reference_problem


def _read(path: str, domain: str) -> list[dict]:
    items = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict) or "response" not in obj or "reference" not in obj:
                raise UserError(f'{where}: expected an object with "response" and "reference"')
            if not isinstance(obj["response"], str):
                raise UserError(f'{where}: "response" must be a string')
            if not isinstance(obj.get("truncated", False), bool):
                raise UserError(f'{where}: "truncated" must be true or false')
            problem = reference_problem(domain, obj["reference"])
            if problem is not None:
                raise UserError(f"{where}: {problem}")
            items.append({"domain": domain, "response": obj["response"], "reference": obj["reference"],
                          "truncated": obj.get("truncated", False)})
    return items


def _score(args) -> int:
    from tqdm import tqdm

    from prism_fast.rewards.api import Rewarder
    from prism_fast.rewards.code_sandbox import SandboxUnavailable

    items = _read(args.input, args.domain)
    with Rewarder(num_workers=args.workers, timeout_s=args.timeout, require_think=not args.no_think) as rewarder:
        try:
            job = rewarder.submit(items)
        except SandboxUnavailable as e:
            raise UserError(str(e)) from None
        with tqdm(total=len(items), desc="scoring", unit="item", file=sys.stderr, disable=None) as bar:
            while not job.done():
                time.sleep(0.2)
                bar.update(job.n_done - bar.n)
            bar.update(job.n_done - bar.n)
        results = job.result()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for r in results:
            out.write(json.dumps({"reward": r.reward, "correct": r.correct, "reason": r.reason}) + "\n")
    finally:
        if args.out:
            out.close()
    reasons = collections.Counter(r.reason for r in results)
    mean = sum(r.reward for r in results) / max(1, len(results))
    counts = " ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
    note = " (every item timed out or crashed: the verifier failed, not the model)" if job.all_failed else ""
    print(f"scored {len(results)} items: mean reward {mean:.4f}; {counts}{note}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism_fast.rewards", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a JSONL file of responses")
    p.add_argument("--domain", required=True, choices=DOMAINS)
    p.add_argument("--input", required=True, help="JSONL: {response, reference[, truncated]} per line")
    p.add_argument("--out", help="output JSONL (default: stdout)")
    p.add_argument("--no-think", action="store_true", help="no <think> format gate: the whole response is the answer")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per verifier task (default 10)")
    p.add_argument("--workers", type=int, default=None, help="verifier processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    return _score(args)


if __name__ == "__main__":
    sys.exit(run_entry(main))
