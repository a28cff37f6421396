"""python -m prism_fast.rewards score --domain D --input FILE.jsonl [--out FILE] [--no-think] [--timeout S]

Reads one JSON object per line, {"response": str, "reference": ..., "truncated": bool (optional)}, writes one
{"reward", "correct", "reason"} per line in input order (stdout without --out), and a summary line to stderr.
Exit 0 when every line was scored; a malformed line (not UTF-8, not JSON, NaN / Infinity, a reference of the
wrong shape) stops it before any scoring with `error: FILE:LINE: ...` and exit 2, as do a bad --timeout or an
--out that is a directory. A run in which every item crashed (the verifier failed, not the model) writes its
results, then ends with one `error:` line and exit 1. --out is written through a temporary file and a rename,
so a failed run never leaves a truncated file in place of an older one. Blank lines are skipped.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from pathlib import Path

from prism_fast.entry import UserError, run_entry
from prism_fast.rewards.items import DOMAINS, reference_problem

MAX_TIMEOUT_S = 86400.0
"""A day per item: far beyond any verifier, and far below the float seconds at which the dispatcher's deadline
arithmetic and thread waits overflow (--timeout 1e12 or inf used to crash every item)."""


def _no_constants(name: str):
    raise ValueError(name)


def _parse_line(raw: bytes, where: str):
    """One input line -> its JSON value; UserError naming FILE:LINE for bytes that are not UTF-8 (a binary file
    given as --input) or text that is not strict JSON (Python's json accepts NaN / Infinity; a NaN reference
    would compare unequal to every answer and score a silent 0)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start + 1} is 0x{raw[e.start]:02x}); --input must be "
                        f"a JSONL file of {{response, reference}} objects") from None
    if not line.strip():
        return None
    try:
        return json.loads(line, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:
        raise UserError(f"{where}: {e} is not a JSON number; a reference must be a finite number or a string")\
            from None


def _read(path: str, domain: str) -> list[dict]:
    items = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            obj = _parse_line(raw, where)
            if obj is None:
                continue
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
        except RuntimeError as e:  # the pool could not start its workers (their stderr is printed above)
            print(f"error: the reward workers could not start: {_first_line(e)}", file=sys.stderr)
            return 1
        with tqdm(total=len(items), desc="scoring", unit="item", file=sys.stderr, disable=None) as bar:
            while not job.done():
                time.sleep(0.2)
                bar.update(job.n_done - bar.n)
            bar.update(job.n_done - bar.n)
        results = job.result()
    _write(results, args.out)
    reasons = collections.Counter(r.reason for r in results)
    mean = sum(r.reward for r in results) / max(1, len(results))
    counts = " ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
    note = " (every item timed out or crashed: the verifier failed, not the model)" if job.all_failed else ""
    print(f"scored {len(results)} items: mean reward {mean:.4f}; {counts}{note}", file=sys.stderr)
    if results and reasons["crash"] == len(results):
        # exit 0 here would let a pipeline read all-zero rewards as the model's; the per-item rows are written
        why = next((_first_line(r.detail) for r in results if r.detail), "no detail")
        print(f"error: every one of the {len(results)} items crashed in the verifier ({why}), so these rewards say "
              f"nothing about the responses: the verifier or its sandbox is broken here (a missing dependency, a "
              f"killed worker); fix that and rerun", file=sys.stderr)
        return 1
    return 0


def _first_line(text) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")[:200]


def _write(results, out: str | None) -> None:
    """One JSON row per result to stdout, or to `out` through a temporary sibling and a rename."""
    rows = "".join(json.dumps({"reward": r.reward, "correct": r.correct, "reason": r.reason}) + "\n"
                   for r in results)
    if out is None:
        sys.stdout.write(rows)
        return
    tmp = Path(f"{out}.partial")
    tmp.write_text(rows, encoding="utf-8")
    os.replace(tmp, out)


def _check_args(args) -> None:
    """Refuse bad options before any item is read or scored."""
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT_S):
        raise UserError(f"--timeout {args.timeout}: must be a finite number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1 (or omitted: one per CPU)")
    if args.out is not None:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {args.out} is a directory; name the output JSONL file, e.g. {out / 'scores.jsonl'}")
        if not out.parent.is_dir():
            raise UserError(f"--out {args.out}: directory {out.parent} does not exist; create it or name another file")


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
    _check_args(args)
    return _score(args)


if __name__ == "__main__":
    sys.exit(run_entry(main))
