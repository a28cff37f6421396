"""Bundled default corpora: reproducible generators, checkable answers, and default_corpus() with SmolLM2's
tokenizer from the bundled GGUF feeding the real loader."""
import json
import os

import numpy as np
import pytest

from prism_fast.data import build_loader, build_val_loader, default_corpus
from prism_fast.data.corpora import DEFAULT_SOURCES, HERE
from prism_fast.data.corpora import generate as gen


def _records(name):
    with open(HERE / name) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("fname,kind,n,seed", gen.GENERATED)
def test_generated_files_are_reproducible(fname, kind, n, seed):
    assert gen.render(gen.generate(kind, n, seed)) == (HERE / fname).read_text()


def test_every_answer_is_checkable():
    for name in ("math_generated.jsonl", "science_generated.jsonl", "code_generated.jsonl"):
        for rec in _records(name):
            assert rec["answer"].endswith(f"Final answer: {rec['final']}")
    for rec in _records("code_generated.jsonl"):
        code = rec["answer"].split("```python\n")[1].split("```")[0]
        tests = rec["answer"].split("```python\n")[2].split("```")[0]
        ns = {}
        exec(code + "\n" + tests, ns)  # the shipped solution passes the shipped tests
    # spot-check math by recomputing from the question text
    for rec in _records("math_generated.jsonl"):
        if rec["question"].startswith("Solve for x:"):
            lhs, rhs = rec["question"][len("Solve for x: "):-1].split(" = ")
            a, b = lhs.split("x + ")
            assert int(a) * int(rec["final"]) + int(b.strip("()")) == int(rhs)


def test_readme_states_origin_and_licence():
    text = (HERE / "README.md").read_text()
    assert "CC0-1.0" in text
    for fname, *_ in DEFAULT_SOURCES.values():
        assert fname in text


def test_default_corpus_feeds_the_loader(tmp_path, gguf_path, smol_tok):
    mix = default_corpus(gguf_path, tmp_path / "def")
    assert mix.domains == ["code", "general", "math", "science"]
    shares = {d: 0.0 for d in mix.domains}
    for s, w in zip(mix.sources, mix.weights):
        shares[s.domain] += w
    assert shares == pytest.approx({"general": 0.10, "math": 0.37, "code": 0.405, "science": 0.125})
    for s in mix.sources:
        assert s.shard().meta["tokenizer"]["eos_token_id"] == smol_tok.eos_token_id
    chat = next(s for s in mix.sources if s.name == "chat").shard()
    first = smol_tok.decode(np.asarray(chat.tokens[chat.offsets[0]:chat.offsets[1]]))
    assert first.startswith("User: ") and "\nAssistant: " in first and first.endswith(smol_tok.eos_token)
    loader = build_loader(mix, seq_len=256, micro_batch_size=2, seed=0)
    b = next(loader)
    loader.close()
    assert b["input_ids"].shape == (1, 512) and int(b["input_ids"].max()) < len(smol_tok)
    assert len(build_val_loader(mix, seq_len=256)) > 0
    stamp = os.path.getmtime(tmp_path / "def" / "math" / "meta.json")
    default_corpus(gguf_path, tmp_path / "def")  # up to date: reused, not re-tokenized
    assert os.path.getmtime(tmp_path / "def" / "math" / "meta.json") == stamp
