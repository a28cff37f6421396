"""Data side of the trainer: DataSection -> Mixture -> rank's packed training loader + held-out val loader.

The loader (prism_fast.data) yields one packed row per micro step: input_ids / labels / position_ids /
domain_ids [1, B*seq_len], cu_seqlens int32 [n_segments+1]. Its `cursor` (global sample index of the next step)
is the resume point, valid across world sizes. With gradient accumulation a rank calls next() `grad_accum` times
per optimizer step: step s of an A-micro-step, W-rank run reads global samples [s*A*W*B, (s+1)*A*W*B), the same
set for every (A, W) with equal A*W -- which is why 2 ranks x 1 micro step == 1 rank x 2 micro steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    loader: object
    val_loader: object | None
    domains: list[str]
    tokenizer_path: str | None
    mixture: object

    def cursor(self) -> str:
        """Samples the next step will read, as a string for logs / error messages (host-only, no sync)."""
        return f"from global sample {self.loader.cursor}"

    def close(self):
        self.loader.close()


def _tokenizer_for(section, model_tok: str | None) -> str:
    if section.tokenizer:
        return str(Path(section.tokenizer).expanduser())
    if model_tok:
        return model_tok
    from prism_fast.models.hf_io import smollm2_gguf_path  # noqa: PLC0415 (tiny models use SmolLM2's tokenizer)
    return str(smollm2_gguf_path())


def build(section, *, tokenizer_path: str | None, rank: int, world_size: int, vocab_size: int) -> TrainData:
    import torch.distributed as dist  # noqa: PLC0415
    from prism_fast import data as pdata  # noqa: PLC0415

    tok = _tokenizer_for(section, tokenizer_path)
    if section.mixture == "default":
        out = Path(section.cache_dir).expanduser()
        # Rank 0 tokenizes the bundled corpora once (cached by tokenizer fingerprint) and tells the other ranks
        # which shards make the mixture; they open the same shards without re-checking the tokenizer (slow).
        spec = [None]
        if rank == 0:
            mix = pdata.default_corpus(tok, out)
            spec = [([(str(s.path), float(w), s.domain, s.name) for s, w in zip(mix.sources, mix.weights)],
                     mix.val_fraction)]
        if dist.is_initialized() and world_size > 1:
            dist.broadcast_object_list(spec, src=0)
        if rank != 0:
            sources, val_fraction = spec[0]
            mix = pdata.Mixture([pdata.Source(p, w, d, name=n) for p, w, d, n in sources], val_fraction=val_fraction)
    elif section.mixture == "custom":
        mix = pdata.Mixture([pdata.Source(Path(s["path"]).expanduser(), float(s.get("weight", 1.0)), s.get("domain"))
                             for s in section.sources])
    else:
        mix = getattr(pdata.presets, section.mixture)(section.root)
    meta_vocab = mix.sources[0].shard().meta.get("tokenizer", {}).get("vocab_size")
    if meta_vocab and meta_vocab > vocab_size:
        raise ValueError(f"the data was tokenized with a vocabulary of {meta_vocab} tokens but the model has "
                         f"vocab_size={vocab_size}; use the model's tokenizer (--data.tokenizer) or a bigger model")
    loader = pdata.build_loader(mix, seq_len=section.seq_len, micro_batch_size=section.micro_batch_size, rank=rank,
                                world_size=world_size, seed=section.seed, packing=section.packing,
                                loss_mask_prompt=section.loss_mask_prompt)
    val = None
    if section.val_batches > 0:
        val = pdata.build_val_loader(mix, seq_len=section.seq_len, micro_batch_size=section.micro_batch_size,
                                     rank=rank, world_size=world_size, max_rows_per_domain=section.val_batches)
    return TrainData(loader=loader, val_loader=val, domains=list(mix.domains), tokenizer_path=tok, mixture=mix)


def as_packed_row(batch: dict) -> dict:
    """Keep only what the model consumes, in the model's layout (B == 1 packed row)."""
    return {k: batch[k] for k in ("input_ids", "labels", "position_ids", "cu_seqlens", "domain_ids")
            if k in batch} | ({"cu_seqlens": batch["cu_seqlens"].to(torch.int32)} if "cu_seqlens" in batch else {})
