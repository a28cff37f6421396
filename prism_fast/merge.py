"""Linear weight merge of two HF checkpoints, streamed tensor by tensor (the paper's long-context repair step).

    python -m prism_fast.merge --a BASE_DIR --b MIDTRAINED_DIR --weight 0.15 --out DIR [--dtype bf16|fp32]

W = weight * A + (1 - weight) * B for every tensor (PRISM: 0.15 x base + 0.85 x mid-trained, then 1,000 steps
of long-context training). The arithmetic is done in fp32 and cast back to the checkpoint dtype (or --dtype).
Memory: one tensor of A, one of B and the current output shard at a time (safetensors are memory-mapped), so
merging two 24B checkpoints needs about one output shard of RAM, not 2 x the model. config.json and the other
non-weight files (tokenizer, generation config) are copied from B. The two checkpoints must have the same tensor
names and shapes (a ValueError names the first mismatch).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prism_fast.models.hf_io import weight_map

_DT = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def _weight_map(d: Path) -> dict[str, str]:
    """tensor name -> shard file name, for a single-file or sharded (index.json) HF directory."""
    try:
        return weight_map(d)
    except FileNotFoundError as e:
        raise ValueError(f"{d} has neither model.safetensors nor model.safetensors.index.json ({e}); pass an HF "
                         f"model directory (e.g. one written by `python -m prism_fast.export`)") from None


class _Reader:
    """Opens each shard once (memory-mapped) and reads tensors by name."""

    def __init__(self, d: Path):
        self.d, self.map, self._open = d, _weight_map(d), {}

    def get(self, name: str) -> torch.Tensor:
        fn = self.map[name]
        if fn not in self._open:
            self._open[fn] = safe_open(self.d / fn, "pt")
        return self._open[fn].get_tensor(name)


def merge(a: str | Path, b: str | Path, out: str | Path, weight: float, *, dtype: str | None = None,
          max_shard_bytes: int = 2 * 2**30) -> Path:
    """Write weight * A + (1 - weight) * B to `out` as sharded safetensors + index. Returns out."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight={weight} must be in [0, 1] (weight of A; B gets 1 - weight)")
    a, b, out = Path(a), Path(b), Path(out)
    ra, rb = _Reader(a), _Reader(b)
    if set(ra.map) != set(rb.map):
        diff = sorted(set(ra.map) ^ set(rb.map))[:5]
        raise ValueError(f"A and B have different tensor names (first differences: {diff}); both must be the "
                         f"same architecture exported the same way")
    out.mkdir(parents=True, exist_ok=True)
    # Stream: each tensor is merged, appended to the current shard, and the shard is written once it is full.
    # Shards get temporary names until their count is known.
    shard: dict[str, torch.Tensor] = {}
    size = 0
    written: list[tuple[str, list[str]]] = []

    def write_shard():
        tmp_name = f"part-{len(written):05d}.safetensors"
        save_file(shard, str(out / tmp_name), metadata={"format": "pt"})
        written.append((tmp_name, list(shard)))

    for name in sorted(ra.map):
        ta, tb = ra.get(name), rb.get(name)
        if ta.shape != tb.shape:
            raise ValueError(f"{name}: shape {tuple(ta.shape)} in A vs {tuple(tb.shape)} in B")
        out_dt = _DT[dtype] if dtype else tb.dtype
        t = (weight * ta.float() + (1.0 - weight) * tb.float()).to(out_dt).contiguous()
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            write_shard()
            shard, size = {}, 0
        shard[name] = t
        size += nbytes
    if shard:
        write_shard()
    weight_map: dict[str, str] = {}
    n = len(written)
    total = 0
    for i, (tmp_name, keys) in enumerate(written):
        final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (out / tmp_name).rename(out / final)
        for k in keys:
            weight_map[k] = final
        total += (out / final).stat().st_size
    if n > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for f in b.iterdir():  # config, tokenizer, generation config
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    if dtype:
        cfg_path = out / "config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            cfg["torch_dtype"] = cfg["dtype"] = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}[dtype]
            cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, help="HF dir A (PRISM: the base model)")
    p.add_argument("--b", required=True, help="HF dir B (PRISM: the mid-trained model)")
    p.add_argument("--weight", type=float, default=0.15, help="weight of A (default 0.15)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=sorted(_DT), default=None, help="output dtype (default: B's)")
    args = p.parse_args(argv)
    out = merge(args.a, args.b, args.out, args.weight, dtype=args.dtype)
    print(f"merged {args.weight} * {args.a} + {1 - args.weight:g} * {args.b} -> {out}")


if __name__ == "__main__":
    main()
