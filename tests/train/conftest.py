"""Shared fixtures for tests/train: the SmolLM2 tokenizer saved once as an HF directory (loading it from the GGUF
costs ~10 s per process; from tokenizer.json well under a second -- same fingerprint, so the same shards)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory):
    from prism_fast.models.hf_io import load_tokenizer, smollm2_gguf_path
    d = tmp_path_factory.mktemp("smollm2_tokenizer")
    load_tokenizer(smollm2_gguf_path()).save_pretrained(d)
    return d
