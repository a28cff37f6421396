"""Fixtures for tests/rl: a 2-layer slice of SmolLM2-135M-Instruct saved as an HF directory.

Why a slice: a random `tiny` model samples near-uniform tokens over the 49k vocabulary, so every reward is 0, every
advantage 0, and nothing would train -- a resume or 2-rank test on it could not fail. The slice keeps SmolLM2's
trained embeddings / LM head and its first 2 blocks (~31M parameters): it writes word-like text whose repetition
penalty differs between samples, so advantages are non-zero and the policy moves, at a few seconds per step."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def make_slice(out: Path, num_layers: int = 2) -> Path:
    from safetensors.torch import save_file

    from prism_fast.models import smollm2_hf_dir
    from prism_fast.models.hf_io import iter_safetensors
    src = Path(smollm2_hf_dir())
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = num_layers
    (out / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)
    keep = {k: v for k, v in iter_safetensors(src / "model.safetensors")
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < num_layers}
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def smol_slice(tmp_path_factory) -> Path:
    return make_slice(tmp_path_factory.mktemp("smol_slice") / "model")
