"""`python -m prism_fast.study [--quick | --smoke] [--out DIR] [--report-dir DIR]` (make study): the mini-PRISM
study. See docs/study/README.md."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from prism_fast.entry import run_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prism_fast.study", description=__doc__)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", dest="mode", action="store_const", const="quick", help="< 15 min on 2 CPU cores (7.0 min measured; a slow test runs it)")
    m.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                   help="~1-2 min: a 2-layer SmolLM2 slice, a few steps per stage (a slow test runs it)")
    p.set_defaults(mode="full")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: runs/study-<mode>); a rerun "
                   "into it reuses every stage whose inputs did not change")
    p.add_argument("--report-dir", type=Path, default=None, help="where REPORT.md and its plots go "
                   "(default: <out>/report)")
    p.add_argument("--stage-timeout", type=float, default=None, help="seconds before a stage is stopped "
                   "(default: 20x its estimate, at least 30 min)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from prism_fast.study.stages import Study
    args = build_parser().parse_args(argv)
    # SIGTERM -> SystemExit, so the running stage's child is stopped cleanly (stages.run_logged) and saves.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    out = args.out or Path("runs") / f"study-{args.mode}"
    study = Study(out, args.mode, progress=not args.no_progress, stage_timeout_s=args.stage_timeout,
                  report_dir=args.report_dir)
    res = study.run()
    print(f"report: {res['report']}\nstages run: {', '.join(res['ran']) or 'none (all cached)'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
