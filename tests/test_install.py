"""The installed environment as a new user gets it: no module of the repository shadows an installed package.

transformers >= 5.25 imports Hugging Face's hub-kernels package (`kernels` on PyPI) from
`transformers/integrations/hub_kernels.py` whenever it is installed. The repository's top-level `kernels/`
folder (installed as `prism_fast.kernels`) must never be found first, not even from the repository root, where
`python -m ...` and pytest put the root at `sys.path[0]`.
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -c code` with the repository root as cwd and sys.path[0] (as `python -m prism_fast.X` has it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_third_party_kernels_package_is_installed():
    # transformers 5.25 depends on it; the lock pins it. Without it the tests below would prove nothing.
    assert importlib.metadata.version("kernels"), "the third-party `kernels` package is not installed"


def test_top_level_kernels_resolves_to_the_installed_package_from_the_repo_root():
    r = _run_from_root("import sys, kernels; print(kernels.__file__); "
                       "assert sys.path[0] in ('', %r), sys.path[0]" % str(ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    path = Path(r.stdout.strip().splitlines()[-1]).resolve()
    assert ROOT / "kernels" not in path.parents, f"`import kernels` from the repo root found the repo's folder: {path}"
    assert path.parent.parent.name == "site-packages", path


def test_hub_kernels_and_gguf_tokenizer_load_from_the_repo_root():
    code = (
        "import transformers.integrations.hub_kernels\n"
        "import prism_fast.kernels.configs as c\n"
        "from prism_fast.models import load_tokenizer, smollm2_gguf_path\n"
        "tok = load_tokenizer(smollm2_gguf_path())\n"
        "print(len(tok('2 + 2 = 4')['input_ids']), c.__name__)\n"
    )
    r = _run_from_root(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "prism_fast.kernels.configs"


def test_the_kernels_folder_is_not_a_regular_package():
    # A regular package (with __init__.py) at the repo root wins over site-packages; a namespace portion loses.
    assert not (ROOT / "kernels" / "__init__.py").exists()


def _top_level_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("folder", ["prism_fast", "kernels", "tests", "bench"])
def test_no_code_imports_a_top_level_kernels_module(folder):
    bad = [f"{p.relative_to(ROOT)}:{line}: import {name}"
           for p in sorted((ROOT / folder).rglob("*.py"))
           for line, name in _top_level_imports(p)
           if name == "kernels" or name.startswith("kernels.")]
    assert not bad, "use prism_fast.kernels instead:\n" + "\n".join(bad)
