"""`--model PATH` for the evaluator: an HF directory, a .gguf file, a trainer run / checkpoint, or `smollm2`.

A trainer run directory (or its checkpoints/ or a step-N/ directory: anything prism_fast.export takes) is
exported once into a temporary HF directory with prism_fast.export (fp32) and loaded from there, so evaluation
reads exactly what a user would export. Prompts use the tokenizer's chat template; a tokenizer without one (a
base model) gets the paper's plain "User: ... / Assistant:" turns (SPEC section 2, data formatting).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from prism_fast.errors import UserError, describe

PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and not (p / "config.json").is_file() and (
        (p / "checkpoints").is_dir() or p.name.startswith("step-") or p.name == "checkpoints")


def load_for_eval(path: str):
    """(model, tokenizer, resolved label) for `--model PATH`; the model is in eval mode, fp32, on CPU."""
    from prism_fast.models import from_pretrained, load_tokenizer, smollm2_hf_dir  # noqa: PLC0415
    if path == "smollm2":
        p = smollm2_hf_dir()
        return from_pretrained(p), load_tokenizer(p), "SmolLM2-135M-Instruct"
    p = Path(path)
    if not p.exists():
        raise UserError(f"--model {path}: no such file or directory (an HF directory, a .gguf, a trainer run "
                        f"directory, or 'smollm2')")
    if _is_checkpoint(p):
        from prism_fast.train.hf_export import export_checkpoint  # noqa: PLC0415
        with tempfile.TemporaryDirectory(prefix="prism_eval_export_") as tmp:
            out = export_checkpoint(p, tmp, dtype="fp32")
            if not (out / "tokenizer_config.json").is_file():
                raise UserError(f"--model {path}: the checkpoint's run config names no tokenizer; export it with "
                                f"`python -m prism_fast.export` and save a tokenizer beside it")
            return from_pretrained(out), load_tokenizer(out), str(p)
    try:
        tok = load_tokenizer(p)
    except Exception as e:  # a weights-only directory: say what is missing instead of a transformers traceback
        raise UserError(f"--model {path}: no tokenizer could be loaded from it ({describe(e.__cause__ or e)}); "
                        f"save the tokenizer into the model directory") from e
    return from_pretrained(p), tok, str(p)


def prompt_ids(tokenizer, prompt: str) -> tuple[list[int], str]:
    """Token ids of one user turn ready for generation, and the format used ("chat_template" | "plain")."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids   # transformers 5 returns a BatchEncoding
        return [int(t) for t in ids], "chat_template"
    ids = tokenizer(PLAIN_TEMPLATE.format(prompt=prompt))["input_ids"]
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return [int(t) for t in ids], "plain"


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the chat turn terminator when the tokenizer has one (<|im_end|>, <|eot_id|>, ...)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)
