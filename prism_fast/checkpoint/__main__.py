"""`python -m prism_fast.checkpoint verify PATH...`: list every checkpoint of a run as intact, damaged or incomplete.

PATH: a run directory, its checkpoints/ directory or one step-N directory. Every byte is read and checked against
the CRC-32 and size recorded in the COMPLETE marker. Exit status 0 when every complete checkpoint is intact (or
legacy: written before markers carried checksums), 1 when any is damaged, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from prism_fast.checkpoint.integrity import content_files, verify
from prism_fast.entry import UserError, run_entry

_STEP = re.compile(r"^step-(\d+)(\.tmp)?$")


def _step_dirs(path: Path) -> list[Path]:
    if _STEP.match(path.name) and path.is_dir():
        return [path]
    for d in (path / "checkpoints", path):
        found = [p for p in d.iterdir() if p.is_dir() and _STEP.match(p.name)] if d.is_dir() else []
        if found:
            return sorted(found, key=lambda p: (int(_STEP.match(p.name).group(1)), p.name))
    raise UserError(f"no step-N checkpoint directories under {path} (expected RUN_DIR/checkpoints/step-N/)")


def _size(d: Path) -> str:
    total = sum((d / n).stat().st_size for n in content_files(d))
    return f"{total / 2**20:.1f} MiB"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m prism_fast.checkpoint", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every checkpoint's files against its COMPLETE manifest")
    v.add_argument("paths", nargs="+", help="run dir, checkpoints/ dir or step-N dir")
    args = p.parse_args(argv)
    bad = 0
    for path in args.paths:
        for d in _step_dirs(Path(path)):
            status, problems = verify(d)
            if d.name.endswith(".tmp"):
                status, problems = "incomplete", ["interrupted write; removed at the next start, never loaded"]
            note = (_size(d) if status == "intact" else problems[0] if problems
                    else "marker without checksums (written by an older version)")
            print(f"{str(d):<60} {status:<10} {note}")
            for extra in problems[1:]:
                print(f"{'':<60} {'':<10} {extra}")
            bad += status == "damaged"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
