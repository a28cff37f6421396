"""bench/gpu_check.sh --dry-run on CPU: every phase's Python entry imports and parses the exact arguments the GPU
run passes, the peers (Liger-Kernel, einops wheels, the mamba-ssm sdist's Triton SSD kernels, FlexAttention)
unpack and import from bench/peers/, the report has one table row per phase, and the report and log are copied
into $GPU_CHECK_OUT. What a CPU cannot check (kernels on silicon, timings) is the GPU run itself."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_RESULTS=str(tmp_path / "results"),
               GPU_CHECK_OUT=str(tmp_path / "out"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = list((tmp_path / "results").glob("gpu_check_*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| phase |" not in line]
    assert len(rows) == 7, text[-3000:]
    assert all("| ok |" in r for r in rows), "\n".join(rows)
    assert text.count("dry-run ok: bench_") == 5                     # the five benchmark entries
    for peer in ("liger_kernel: ", "mamba_ssm: 2.", "einops: ", "flex_attention: "):
        line = next(line for line in text.splitlines() if peer in line)
        assert "unavailable" not in line, line
    copied = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert copied == [".log", ".md"]
