"""Model and tokenizer access for the analyses that run forward passes (CKA, landscape).

Default loader: prism_fast.models.from_pretrained (HF directory or .gguf). `loader="hf"` uses transformers'
AutoModelForCausalLM instead (for families prism_fast does not implement); the helpers below hide the one API
difference that matters here (hidden states / logits access).
"""
from __future__ import annotations

from pathlib import Path

import torch


def load_model(path, *, dtype=torch.float32, loader: str = "prism"):
    """Load a causal LM for inference (eval mode, no grad needed): an HF directory, a .gguf file, or a trainer DCP
    checkpoint directory (`.metadata` + `model_config.json`, see prism_fast/train/checkpoint.py)."""
    path = str(path)
    if (Path(path) / ".metadata").is_file():
        return _load_dcp(Path(path), dtype)
    if loader == "prism":
        from prism_fast.models import from_pretrained

        model = from_pretrained(path, dtype=dtype)
    elif loader == "hf":
        from transformers import AutoModelForCausalLM

        kw = {"gguf_file": Path(path).name} if path.endswith(".gguf") else {}
        src = str(Path(path).parent) if kw else path
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
    else:
        raise ValueError(f"loader must be 'prism' or 'hf' (got {loader!r})")
    return model.eval()


def _load_dcp(path: Path, dtype):
    """Build from the checkpoint's model_config.json, then copy the DCP tensors in one at a time (memory: the model
    + one tensor). Tied LM heads are absent from the state and stay tied to the embedding."""
    import json

    from prism_fast.analysis.readers import DCPReader
    from prism_fast.models import ModelConfig, build_model

    cfg_file = path / "model_config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path}: DCP checkpoint without model_config.json; export it to an HF directory first "
                         "or pass a trainer checkpoint (which writes model_config.json)")
    model = build_model(ModelConfig.from_hf_dict(json.loads(cfg_file.read_text())), dtype=dtype)
    own = model.state_dict()
    reader = DCPReader(str(path))
    missing = set(own) - set(reader.names())
    if any(not k.startswith("lm_head") for k in missing):
        raise ValueError(f"{path}: DCP checkpoint lacks model tensors {sorted(missing)[:5]}")
    with torch.no_grad():
        for name in reader.names():
            if name not in own:
                raise ValueError(f"{path}: tensor {name} is not a parameter of {model.config.model_type}")
            own[name].copy_(reader.read(name))
    return model.eval()


def load_tokenizer(path, *, loader: str = "prism"):
    path = str(path)
    if loader == "prism":
        from prism_fast.models import load_tokenizer as _load

        return _load(path)
    from transformers import AutoTokenizer

    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    return AutoTokenizer.from_pretrained(path)


def hidden_states(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """HF output_hidden_states convention: num_layers + 1 tensors [B, T, D] (last one after the final norm)."""
    if hasattr(model, "hidden_states") and callable(model.hidden_states):
        return list(model.hidden_states(input_ids))
    return list(model(input_ids, output_hidden_states=True).hidden_states)


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] from either a prism_fast model (returns a tensor) or a transformers model (an output)."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def encode(tokenizer, text: str, max_tokens: int) -> torch.Tensor:
    """One text -> input_ids [1, T] (T <= max_tokens), BOS added when the tokenizer adds one."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    if not ids:
        raise ValueError(f"text {text[:40]!r} encodes to no tokens; remove empty inputs")
    return torch.tensor([ids], dtype=torch.long)
