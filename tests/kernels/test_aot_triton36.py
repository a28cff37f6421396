"""The spill / shared-memory check of tests/kernels/test_spills.py again with the GPU image's Triton (3.6.0; this
venv has a newer one): register allocation differs between Triton versions (the dK/dV kernel at head dim 128
spills 1180 B with 3.6.0 but 320 B with 3.9.0 at the same tiles), and the device runs 3.6.0.

Triton 3.6.0 goes into a throwaway venv under tmp_path (pip, from the package registry: skipped with the reason
when it cannot be installed); PRISM_TRITON36_PYTHON=/path/to/python reuses one whose site-packages holds it. The
child interpreter sees this venv's packages (torch, the editable prism_fast) after its own, so only Triton
differs. ~5 min of ptxas on a cold cache plus the install: slow.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.aot_util import aot_compile, assert_all_compiled, assert_fits_shared_memory, assert_no_spills, format_table
from tests.kernels.test_aot import LIMITS
from tests.kernels.test_spills import hot_specs_sm90

ROOT = Path(__file__).resolve().parents[2]
VERSION = "3.6.0"


def _triton36_python(tmp_path: Path) -> str:
    given = os.environ.get("PRISM_TRITON36_PYTHON")
    if given:
        return given
    venv = tmp_path / "triton36"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    proc = subprocess.run([py, "-m", "pip", "install", "-q", f"triton=={VERSION}"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"cannot install triton=={VERSION} into a throwaway venv: {proc.stderr[-300:]}")
    # this venv's site-packages after the throwaway one's (addsitedir also runs the editable finder's .pth)
    site = subprocess.check_output([py, "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip()
    Path(site, "zz_prism_dev_venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return py


@pytest.mark.slow
def test_sm90_rows_compile_without_spills_on_triton_3_6(tmp_path):
    py = _triton36_python(tmp_path)
    got = subprocess.check_output([py, "-c", "import triton; print(triton.__version__)"], text=True).strip()
    assert got == VERSION, f"{py} imports triton {got}"
    recs = aot_compile(hot_specs_sm90(), archs=(90,), python=py, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=1800)
    print("\n" + format_table(recs))
    assert {r.get("triton") for r in recs if r["ok"]} == {VERSION}
    assert_all_compiled(recs)
    assert_fits_shared_memory(recs, LIMITS)
    assert_no_spills(recs)
