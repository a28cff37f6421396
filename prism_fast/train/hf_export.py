"""Export a mid-training checkpoint (DCP) to a Hugging Face directory that transformers loads: the library part
of `python -m prism_fast.export` (the trainers call it after their last step; the entry point only parses
arguments).

The model is rebuilt from the `model_config.json` stored in the checkpoint, the sharded DCP tensors are loaded into
it in one process (DCP reassembles the shards of any world size; `no_dist=True`), and `save_pretrained` writes
config.json + safetensors. The tokenizer of the run (HF directory or the one inside a .gguf) is saved beside it
when known, so the export is self-contained. Memory: one full copy of the model in fp32 on CPU.

With `verify=True` (the export CLI) the checkpoint is verified against its COMPLETE manifest before anything is
written (every byte; a damaged one is refused naming the file, where it used to export garbage such as weights
of 4e36); with `allow_nonfinite=False` (the CLI's default) every loaded weight must be finite (a NaN / inf weight
makes every output NaN; refusing here beats finding out in an evaluation). The trainers keep the defaults: they
export the checkpoint they have just written and checksummed, on rank 0 alone (a rank-0-only refusal there
would leave the other ranks waiting at the barrier that follows), and their non-finite guard is
train.max_nonfinite. `--out` must not be an existing file.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from prism_fast.checkpoint import integrity
from prism_fast.entry import UserError
from prism_fast.train.checkpoint import load_model_weights, resolve_step_dir

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def export_checkpoint(ckpt: str | Path, out: str | Path, *, dtype: str = "bf16",
                      tokenizer_path: str | None = None, verify: bool = False,
                      allow_nonfinite: bool = True) -> Path:
    from prism_fast.models import ModelConfig, build_model  # noqa: PLC0415
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}; use bf16 | fp32")
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file; name a new (or existing export) directory")
    if not Path(ckpt).exists():
        raise UserError(f"--ckpt {ckpt} does not exist; pass a step-N checkpoint, its checkpoints/ dir or a run dir")
    step_dir = resolve_step_dir(ckpt)
    if verify:
        _verify(step_dir)
    cfg_file = step_dir / "model_config.json"
    if not cfg_file.exists():
        raise ValueError(f"{step_dir} has no model_config.json (written by the trainer with every checkpoint); "
                         f"was it made by prism_fast.midtrain?")
    cfg = ModelConfig.from_hf_dict(json.loads(cfg_file.read_text()))
    model = build_model(cfg, device="cpu")
    with warnings.catch_warnings():  # single-process DCP load is intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_model_weights(step_dir, model)
    model.tie_weights()
    if not allow_nonfinite:
        _check_finite(model, step_dir)
    out = Path(out)
    model.save_pretrained(out, dtype=DTYPES[dtype])
    if tokenizer_path is None:
        run_cfg = step_dir.parent.parent / "config.json"
        if run_cfg.exists():
            tokenizer_path = _tokenizer_from_run(json.loads(run_cfg.read_text()))
    if tokenizer_path:
        try:
            from prism_fast.models.hf_io import load_tokenizer  # noqa: PLC0415
            load_tokenizer(tokenizer_path).save_pretrained(out)
        except Exception as e:  # the weights are the export; a tokenizer problem should not lose them
            print(f"warning: tokenizer not saved ({e})")
    (out / "prism_export.json").write_text(json.dumps({"checkpoint": str(step_dir.resolve()), "dtype": dtype}))
    return out


def _verify(step_dir: Path) -> None:
    """Refuse a checkpoint whose files do not match its manifest (or whose marker is garbage)."""
    status, problems = integrity.verify(step_dir)
    if status not in ("intact", "legacy"):
        raise UserError(f"checkpoint {step_dir} is {status}: {problems[0]}; export an older step-N (`python -m "
                        f"prism_fast.checkpoint verify {step_dir.parent}` lists them)")


def _check_finite(model: torch.nn.Module, step_dir: Path) -> None:
    """UserError naming the first weight tensor with NaN / inf values and how many."""
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise UserError(f"checkpoint {step_dir} has non-finite weights ({name}: {bad} of {t.numel()} values "
                                f"NaN/inf); export an earlier step, or pass --allow-nonfinite to export them anyway")


def _tokenizer_from_run(run_cfg: dict) -> str | None:
    data, model = run_cfg.get("data", {}), run_cfg.get("model", {})
    if data.get("tokenizer"):
        return data["tokenizer"]
    path = model.get("path")
    if path == "smollm2" or path == "tiny":
        from prism_fast.models.hf_io import smollm2_gguf_path  # noqa: PLC0415
        return str(smollm2_gguf_path())
    return path
