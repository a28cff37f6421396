"""bench/gpu_check.sh --dry-run on CPU, mirroring the device run: the tree is staged into a temporary directory,
the development venv's editable finder is disabled (SKBUILD_EDITABLE_SKIP=1) and PYTHONSAFEPATH=1 keeps the
repository root off sys.path, exactly as on the GPU machine where prism_fast is not installed. So a staging
regression (tests/gpu importing a prism_fast without its kernels, a bench that no longer imports) fails here:
every tests/gpu test collects without error (the fast subset and the rest partition them), every bench module
imports, every phase's bench entry parses the GPU run's exact arguments, the peers (Liger-Kernel, einops wheels,
the mamba-ssm sdist's Triton SSD kernels, FlexAttention) unpack and import, prism_fast comes from the stage, and
the report + one tarball reach $GPU_CHECK_OUT. What a CPU cannot check (kernels on silicon, timings) is the GPU
run itself."""
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
N_GPU_TESTS = 77           # tests/gpu today; a new test raises it (the point: none may fail to collect)


def _collected(text: str, title: str) -> tuple[int, str]:
    """(count, section) of one collect-only phase: 'N tests collected' or 'K/N tests collected (M deselected)'."""
    section = text[text.index(title):]
    section = section[:section.index("\n### ", 1) if "\n### " in section[1:] else len(section)]
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", section)
    assert m, section[-1500:]
    return int(m.group(1)), section


@pytest.mark.slow
def test_gpu_check_dry_run_mirrors_the_device(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_RESULTS=str(tmp_path / "results"),
               GPU_CHECK_OUT=str(tmp_path / "out"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = list((tmp_path / "results").glob("gpu_check_*/report.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| phase |" not in line]
    assert len(rows) == 11, text[-3000:]
    assert all("| ok |" in r for r in rows), "\n".join(rows)

    # the package that ran is the staged copy (not the repo root, not an editable install)
    files = re.findall(r"prism_fast\.__file__ (\S+)", text)
    assert files and all("/stage/prism_fast/__init__.py" in f and not f.startswith(str(ROOT)) for f in files), files
    kpath = re.search(r"prism_fast\.kernels \['([^']+)'\]", text).group(1)
    assert kpath.endswith("/stage/prism_fast/kernels"), kpath

    n_all, sec = _collected(text, "### tests/gpu (collect only: all)")
    assert n_all == N_GPU_TESTS and "ERROR" not in sec and not re.search(r"\d+ errors?\b", sec), sec[-2000:]
    n_fast, sec = _collected(text, "### tests/gpu (collect only: fast bf16 subset)")
    n_rest, _ = _collected(text, "### tests/gpu: the rest (collect only)")
    assert n_fast == 14 and n_fast + n_rest == n_all, (n_fast, n_rest)
    for fam in ("test_varlen_bf16_error_budget", "test_decode_bf16", "test_ce_bf16", "test_logprobs_bf16",
                "test_ssd_triton_bf16", "test_conv1d_bf16_error_budget[triton]", "test_conv1d_bf16_error_budget[cuda]",
                "test_state_update_triton"):
        assert fam in sec, f"{fam} missing from the fast subset"
    assert "-64]" in sec and "-128]" in sec                       # both head dims

    bench_files = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert all(f"imported {name}" in text for name in bench_files), text[-3000:]
    assert text.count("dry-run ok: bench_") == 6                   # the six bench entries of the phases
    for peer in ("liger_kernel: ", "mamba_ssm: 2.", "einops: ", "flex_attention: "):
        line = next(line for line in text.splitlines() if peer in line)
        assert "unavailable" not in line, line

    copied = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(copied) == 2 and copied[0].endswith(".md") and copied[1].endswith(".tgz"), copied
    with tarfile.open(tmp_path / "out" / copied[1]) as tar:
        names = tar.getnames()
    assert any(n.endswith("/report.md") for n in names) and any(n.endswith("/log.txt") for n in names), names


@pytest.mark.slow
def test_gpu_check_returns_results_when_terminated(tmp_path):
    """SIGTERM in the middle of a phase (the device tool's limit, a user's ^C): the phase is stopped, the report
    says so, and the report + tarball in $GPU_CHECK_OUT hold everything up to that point."""
    import signal
    import time
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_RESULTS=str(tmp_path / "results"), GPU_CHECK_OUT=str(out))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out.exists() and list(out.glob("*.tgz"))) and time.time() < deadline:   # first phase packed
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    report = next(out.glob("*.md")).read_text()
    assert "**interrupted by signal TERM" in report and "### peers" in report, report[-2000:]
    with tarfile.open(next(out.glob("*.tgz"))) as tar:
        packed = tar.extractfile(next(n for n in tar.getnames() if n.endswith("/report.md"))).read().decode()
    assert "interrupted by signal TERM" in packed
