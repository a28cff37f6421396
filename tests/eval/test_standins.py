"""The bundled stand-ins: regenerate to the shipped bytes, load through the public-schema loaders, pass their
own reference solutions' tests, and share no item with the training corpora or the RL prompt sets."""
import json
import re
from pathlib import Path

import prism_fast
from prism_fast.eval.benchmarks import DATA_DIR, STANDINS, load_benchmark
from prism_fast.eval.data import generate

PKG = Path(prism_fast.__file__).parent
TRAIN_AND_RL = [PKG / "data" / "corpora", PKG / "rl" / "prompts"]


def test_regeneration_gives_shipped_bytes():
    for name, rows in generate.build().items():
        assert (DATA_DIR / name).read_text(encoding="utf-8") == generate.render(rows), name


def test_standins_load_and_are_small():
    sizes = {n: len(load_benchmark(n)) for n in STANDINS}
    assert set(sizes) == {"math_standin", "code_standin", "science_standin"}
    assert all(5 <= s <= 40 for s in sizes.values()), sizes
    code = load_benchmark("code_standin")
    assert all(len(p.reference["tests"]) == 4 for p in code)   # 1 public + 3 from the compressed private field


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def _texts(obj):
    """Every string inside a JSON value (prompts may be chat-message lists)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _texts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _texts(v)


def test_no_overlap_with_training_corpora_or_rl_prompts():
    files = [f for d in TRAIN_AND_RL if d.is_dir() for f in sorted(d.rglob("*.jsonl"))]
    assert any("corpora" in str(f) for f in files), "the training corpora moved: update TRAIN_AND_RL"
    other = _norm(" \n ".join(t for f in files for line in f.read_text(encoding="utf-8").splitlines()
                                if line.strip() for t in _texts(json.loads(line))))
    questions = []
    for f in ("math_standin.jsonl", "code_standin.jsonl", "science_standin.jsonl"):
        for line in (DATA_DIR / f).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            questions.append(row.get("problem") or row.get("question_content") or row.get("Question"))
    hits = [q for q in questions if _norm(q) in other]
    assert not hits, f"stand-in items found in training / RL data: {hits[:3]}"
