"""The study's model inputs: the smoke model (a slice of SmolLM2) and held-out loss per domain of an HF directory.

Held-out loss uses the trainer's own validation split (prism_fast.data.val: the last documents of each bundled
source, never trained on) and the model's packed forward with per-token losses, as `Trainer.validate` does, but on
one HF directory in this process, so base, +MT, +RL and +MT+RL are scored on the same tokens.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def slice_smollm2(out: Path, num_layers: int = 2) -> Path:
    """Write SmolLM2-135M-Instruct cut to its first `num_layers` blocks (embeddings, final norm and tied head kept)
    as an HF directory at `out` (fp32 safetensors + tokenizer files)."""
    from safetensors.torch import save_file

    from prism_fast.models import smollm2_hf_dir
    from prism_fast.models.hf_io import iter_safetensors
    src, out = Path(smollm2_hf_dir()), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = num_layers
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)
    keep = {k: v for k, v in iter_safetensors(src / "model.safetensors")
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < num_layers}
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@torch.no_grad()
def heldout_loss(model_dir: str | Path, corpus_dir: str | Path, *, seq_len: int, rows_per_domain: int,
                 tokenizer: str | Path | None = None) -> dict[str, float | None]:
    """Token-weighted mean next-token loss (nats) per domain on the bundled corpora's validation split.

    Each batch is one packed row [1, seq_len] with cu_seqlens (no attention across documents); per-token losses
    [1, seq_len] are summed by domain in float64. Returns {domain: loss or None if the domain has no tokens}."""
    from prism_fast import data as pdata
    from prism_fast.data.loader import IGNORE_INDEX
    from prism_fast.models import from_pretrained
    from prism_fast.train.data_setup import as_packed_row

    mix = pdata.default_corpus(str(tokenizer or model_dir), Path(corpus_dir))
    val = pdata.build_val_loader(mix, seq_len=seq_len, micro_batch_size=1, max_rows_per_domain=rows_per_domain)
    model = from_pretrained(model_dir)
    n = len(mix.domains)
    sums = torch.zeros(2 * n, dtype=torch.float64)
    for batch in val:
        b = as_packed_row(batch)
        _, per_tok = model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b.get("cu_seqlens"),
                           labels=b["labels"], loss_reduction="sum", return_per_token=True)
        dom = b["domain_ids"].reshape(-1)
        valid = (b["labels"].reshape(-1) != IGNORE_INDEX).to(torch.float64)
        sums[:n].scatter_add_(0, dom, per_tok.reshape(-1).double() * valid)
        sums[n:].scatter_add_(0, dom, valid)
    v = sums.tolist()
    return {d: (v[i] / v[n + i] if v[n + i] else None) for i, d in enumerate(mix.domains)}
