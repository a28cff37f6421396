"""Helpers of the bad-input tests: run a real CLI (`python -m prism_fast....`) and check that it failed the way a
user needs: a non-zero exit (2 for input errors), exactly one `error:` line on stderr that names what to change,
and no traceback."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.train import _runs


def cli(module: str, *args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or _runs.ROOT, env=_runs.env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error(p: subprocess.CompletedProcess, *needles: str, status: int | None = 2) -> str:
    """Assert the run failed with one `error:` line holding every needle; return that line."""
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    where = f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-4000:]}"
    assert p.returncode != 0 and (status is None or p.returncode == status), where
    assert len(lines) == 1, where
    assert "Traceback" not in p.stderr, where
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(d: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under d (to prove an old output survived byte for byte)."""
    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(d).rglob("*")) if f.is_file()}
