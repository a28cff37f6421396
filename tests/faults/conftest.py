"""Fixtures of the fault-injection suite: one prepared corpus cache and one uninterrupted reference run, shared by
every fault (each test then breaks a copy or a new run and compares with the reference)."""
from __future__ import annotations

import pytest

from tests.faults import _faults
from tests.train.conftest import hf_tokenizer_dir  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def base(corpus, hf_tokenizer_dir):  # noqa: F811
    """Arguments every run of the suite shares (the tiny recipe on the bundled corpus, 8 steps, ckpt every 2)."""
    return _faults.base_args(corpus, hf_tokenizer_dir)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, base):
    """The uninterrupted run (1 rank): losses of steps 1..8, checkpoints at 2, 4, 6, 8 (all kept)."""
    d = tmp_path_factory.mktemp("reference")
    _faults.run(None, base + [f"--train.run_dir={d}"])
    return d
