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


# ------------------------------------------------------------------------------------------------ locked installs
LOCKS = (ROOT / "requirements" / "cpu.lock", ROOT / "requirements" / "tools.lock")


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name
    return str(canonicalize_name(name))


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """{canonical name: (version, number of hashes)} of a `--generate-hashes` lock file."""
    pins, current = {}, None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name, _, rest = line.partition("==")
            assert rest, f"{lock.name}: {line!r} is not an exact pin"
            current = _canonical(name)
            pins[current] = (rest.split()[0].split(";")[0], 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, n = pins[current]
            pins[current] = (version, n + 1)
    return pins


def _declared_requirements():
    """Every requirement the locks must satisfy: pyproject's dependencies, its triton + dev extras, its build
    requirements, and the extra inputs of requirements/*.in."""
    import tomllib

    from packaging.requirements import Requirement
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = list(meta["project"]["dependencies"]) + list(meta["build-system"]["requires"])
    for extra in ("triton", "dev"):
        texts += meta["project"]["optional-dependencies"][extra]
    for inp in sorted((ROOT / "requirements").glob("*.in")):
        texts += [ln.split("#")[0].strip() for ln in inp.read_text().splitlines()
                  if ln.split("#")[0].strip()]
    return [Requirement(t) for t in texts]


def test_every_lock_entry_is_an_exact_pin_with_hashes():
    for lock in LOCKS:
        pins = _pins(lock)
        assert pins, f"{lock} is empty"
        unhashed = sorted(name for name, (_, n) in pins.items() if n == 0)
        assert not unhashed, f"{lock.name}: entries without a hash (pip --require-hashes refuses them): {unhashed}"


def test_the_locks_satisfy_pyproject_and_the_lock_inputs():
    pins = {}
    for lock in LOCKS:
        pins.update(_pins(lock))
    problems = []
    for req in _declared_requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _canonical(req.name)
        if name not in pins:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{req} is not satisfied by the locked {name}=={pins[name][0]}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


@pytest.mark.skipif(os.environ.get("PRISM_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose")
def test_the_environment_is_the_lock():
    """`make setup` installed exactly the locked versions (a GPU machine's own torch excepted)."""
    import torch
    problems = []
    for lock in LOCKS:
        for name, (version, _) in _pins(lock).items():
            if name == "torch" and torch.cuda.is_available():
                continue
            try:
                installed = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name}=={version} is locked but not installed")
                continue
            if _canonical(installed) != _canonical(version) and installed != version:
                problems.append(f"{name}: installed {installed}, locked {version}")
    assert not problems, "run `make setup`:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------ errors keep causes
def _eval_with_a_shadowing_kernels_package(tmp_path, *extra):
    """`python -m prism_fast.eval` on the bundled GGUF while a broken top-level `kernels` package shadows the real
    one (what the repository's own kernels/ did before it became a namespace folder)."""
    from prism_fast.models import smollm2_gguf_path
    fake = tmp_path / "shadow" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""A stand-in that lacks what transformers imports."""\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env.update(PYTHONPATH=str(fake.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "prism_fast.eval", "--model", str(smollm2_gguf_path()), "--bench", "math_standin",
           "--limit", "1", "--n", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "ev"), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600), fake


def test_a_tokenizer_load_error_keeps_its_type_message_and_module_path(tmp_path):
    r, fake = _eval_with_a_shadowing_kernels_package(tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "no tokenizer could be loaded" in lines[0]
    assert "ImportError: cannot import name" in lines[0] and str(fake) in lines[0], lines[0]


def test_debug_shows_the_traceback_of_the_cause(tmp_path):
    r, _ = _eval_with_a_shadowing_kernels_package(tmp_path, "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "hub_kernels" in r.stderr and "UserError" in r.stderr, r.stderr[-3000:]


def test_describe_names_the_type_and_the_first_line():
    from prism_fast.errors import describe
    assert describe(ValueError("bad\nmore")) == "ValueError: bad"
    assert describe(KeyError()) == "KeyError"
    e = ImportError("cannot import name 'X'", name="m", path="/x/m/__init__.py")
    assert describe(e) == "ImportError: cannot import name 'X' (module file /x/m/__init__.py)"
