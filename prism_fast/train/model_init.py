"""Build the model for training: meta-device construction -> parallelize (FP8/AC/compile/FSDP2) -> to_empty ->
weights loaded tensor by tensor into each rank's shard.

Memory: no rank ever holds the whole model. Each full tensor is read from the safetensors files (one at a time),
`distribute_tensor(..., src_data_rank=None)` takes this rank's slice locally (no communication: every rank reads
the same file), and it is copied into the sharded parameter; peak extra memory is one tensor. The small bundled
GGUF (SmolLM2-135M) and random `tiny` models are materialized whole on CPU first (they are a few hundred MB at most).
A random init is computed on CPU with the same seed on every rank, so it is identical for every world size (the
2-rank vs 1-rank equality test relies on that).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from prism_fast.distributed import ParallelConfig, ParallelDims, parallelize_model
from prism_fast.distributed.fsdp import to_dtype
from prism_fast.models import ModelConfig, build_model, tiny_config

log = logging.getLogger(__name__)


def _resolve_path(path: str) -> str:
    if path == "smollm2":
        from prism_fast.models.hf_io import smollm2_gguf_path  # noqa: PLC0415
        return str(smollm2_gguf_path())
    return str(Path(path).expanduser())


def model_source(section) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]] | None, str | None]:
    """(config, iterator over (HF name, full tensor), tokenizer path or None) for a ModelSection."""
    if section.path == "tiny":
        cfg = tiny_config(section.tiny_type, **section.tiny_overrides)
        return cfg, None, None
    path = _resolve_path(section.path)
    if path.endswith(".gguf"):
        from prism_fast.models.hf_io import from_pretrained  # noqa: PLC0415
        full = from_pretrained(path, dtype=torch.float32, device="cpu")
        return full.config, iter(full.state_dict().items()), path
    cfg = ModelConfig.from_hf_dict(json.loads((Path(path) / "config.json").read_text()))
    return cfg, _iter_safetensors(Path(path)), path


def _iter_safetensors(d: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """One tensor at a time, read into its own buffer (models.hf_io: no mmap, so RSS stays ~one tensor)."""
    from prism_fast.models.hf_io import iter_safetensors, safetensors_index  # noqa: PLC0415
    for f in safetensors_index(d)[0]:
        yield from iter_safetensors(f)


@torch.no_grad()
def load_into_sharded(model: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy full tensors (by HF name) into the model's possibly-sharded parameters. Returns the count loaded.

    ValueError for unknown names, shape mismatches and parameters left unloaded (a tied LM head is exempt)."""
    sd = model.state_dict()  # FSDP2: DTensor params sharing storage with the module; AC prefixes stripped
    tied = getattr(model.config, "tie_word_embeddings", False)
    loaded = set()
    for name, full in tensors:
        if name not in sd:
            if tied and name == "lm_head.weight":
                continue
            if name.endswith(("rotary_emb.inv_freq", "masked_bias", ".bias_k")):
                continue  # non-parameter buffers some checkpoints carry
            raise ValueError(f"checkpoint tensor {name!r} has no parameter in the model (first model names: "
                             f"{list(sd)[:3]}); is model.path the right architecture?")
        dst = sd[name]
        if tuple(full.shape) != tuple(dst.shape):
            raise ValueError(f"{name}: checkpoint shape {tuple(full.shape)} != model shape {tuple(dst.shape)}")
        if isinstance(dst, DTensor):
            src = distribute_tensor(full.to(device=dst.device, dtype=dst.dtype), dst.device_mesh, dst.placements,
                                    src_data_rank=None)
            dst.to_local().copy_(src.to_local())
        else:
            dst.copy_(full.to(dst.dtype))
        loaded.add(name)
    missing = [k for k in sd if k not in loaded and not (tied and k == "lm_head.weight")]
    if missing:
        raise ValueError(f"{len(missing)} parameters not found in the checkpoint, e.g. {missing[:4]}")
    return len(loaded)


def build_parallel_model(section, pcfg: ParallelConfig, dims: ParallelDims, device: torch.device, kernels=None):
    """Returns (model, model_config, tokenizer_path). The model is parallelized and holds the loaded weights.

    kernels (ops.KernelConfig / dict / None = auto) is resolved for `device`, the FSDP compute dtype, compile and
    FP8 (detected from the swapped linears) right after parallelize, before any weight is loaded, so an invalid
    choice fails fast; the result is `model.kernels`."""
    cfg, tensors, tok_path = model_source(section)
    if tensors is None:  # random init: same on all ranks, on CPU, then sharded
        torch.manual_seed(section.init_seed)
        full = build_model(cfg, device="cpu")
        full.init_weights()
        tensors = list(full.state_dict().items())
    model = build_model(cfg, device="meta")
    info = parallelize_model(model, dims, pcfg, device.type)
    model.configure_kernels(kernels, device=device, dtype=to_dtype(pcfg.param_dtype), compile=pcfg.compile)
    model.to_empty(device=device)
    model.tie_weights() if not isinstance(model.lm_head.weight, DTensor) else None
    n = load_into_sharded(model, tensors)
    log.info("model %s: %d tensors loaded, %.1fM params, parallelism %s", cfg.model_type, n,
             model.num_params() / 1e6, info)
    # FSDP averages over ranks when it cannot sum: then the loss is scaled by the dp size to compensate.
    model.loss_scale_for_fsdp = 1.0 if info["grad_sum"] else float(dims.dp_size)
    return model, cfg, tok_path
