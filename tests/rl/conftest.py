"""Fixtures for tests/rl: a 2-layer slice of SmolLM2-135M-Instruct saved as an HF directory (study.heldout's).

Why a slice: a random `tiny` model samples near-uniform tokens over the 49k vocabulary, so every reward is 0, every
advantage 0, and nothing would train -- a resume or 2-rank test on it could not fail. The slice keeps SmolLM2's
trained embeddings / LM head and its first 2 blocks (~31M parameters): it writes word-like text whose repetition
penalty differs between samples, so advantages are non-zero and the policy moves, at a few seconds per step."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_slice(tmp_path_factory) -> Path:
    from prism_fast.study.heldout import slice_smollm2
    return slice_smollm2(tmp_path_factory.mktemp("smol_slice") / "model", num_layers=2)
