"""Fixtures of the data tests: the real SmolLM2 tokenizer (from the bundled GGUF, loaded once per session and
saved as an HF directory so subprocesses load it fast) and synthetic shards written through the real ShardWriter."""
from pathlib import Path

import numpy as np
import pytest

from prism_fast.data.corpora import bundled_tokenizer_path
from prism_fast.data.shards import ShardWriter


@pytest.fixture(scope="session")
def gguf_path():
    return bundled_tokenizer_path()


@pytest.fixture(scope="session")
def smol_tok(gguf_path):
    """SmolLM2's tokenizer from the GGUF (through load_tokenizer's conversion cache, ~/.cache/prism_fast)."""
    from prism_fast.data.prepare_shards import load_tokenizer
    return load_tokenizer(gguf_path)


@pytest.fixture(scope="session")
def smol_dir(smol_tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("smol_tok")
    smol_tok.save_pretrained(d)
    return str(d)


def make_shard(path, doc_lens, *, seed=0, vocab=1000, fingerprint="synthetic", eos=0, mask=False,
               domain=None):
    """Write a shard of random tokens (each doc ends with `eos`, ids in [1, vocab)); returns the token list per doc."""
    rng = np.random.default_rng(seed)
    w = ShardWriter(path, np.uint16, with_mask=mask)
    docs = []
    for n in doc_lens:
        d = rng.integers(1, vocab, size=n).astype(np.uint32)
        d[-1] = eos
        docs.append(d)
    ids = np.concatenate(docs) if docs else np.zeros(0, np.uint32)
    m = None
    if mask:
        # prompt = first half of each document, response = the rest (incl. EOS)
        m = np.concatenate([(np.arange(n) >= n // 2).astype(np.uint8) for n in doc_lens])
    w.add(ids, np.asarray(doc_lens, dtype=np.int64), m)
    w.close({"tokenizer": {"fingerprint": fingerprint, "name": "synthetic", "vocab_size": vocab,
                           "eos_token": "<eos>", "eos_token_id": eos},
             "format": "qa" if mask else "text", "domain": domain or Path(path).name, "sources": [],
             "skipped_bad": {}})
    return docs
