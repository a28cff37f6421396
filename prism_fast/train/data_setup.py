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

from prism_fast.entry import UserError, agree_on_error, rank0_result

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


def build(section, *, tokenizer_path: str | None, rank: int, world_size: int, vocab_size: int,
          data_rank: int | None = None, data_world_size: int | None = None) -> TrainData:
    """rank / world_size: this process in the job (rank 0 prepares the bundled corpus); data_rank /
    data_world_size: its loader shard (context-parallel ranks of one row share it; default: rank / world_size)."""
    data_rank = rank if data_rank is None else data_rank
    data_world_size = world_size if data_world_size is None else data_world_size
    from prism_fast import data as pdata  # noqa: PLC0415

    tok = _tokenizer_for(section, tokenizer_path)
    expected_fp = None  # the default corpus is (re)made with `tok` by rank 0, so its fingerprint is right
    if section.mixture == "default":
        out = Path(section.cache_dir).expanduser()
        # Rank 0 tokenizes the bundled corpora once (cached by tokenizer fingerprint) and tells the other ranks
        # which shards make the mixture; they open the same shards without re-checking the tokenizer (slow).
        # rank0_result: an error on rank 0 reaches every rank (no rank left waiting in the broadcast).
        made = {}

        def default_spec():
            made["mix"] = m = pdata.default_corpus(tok, out)
            return [(str(s.path), float(w), s.domain, s.name) for s, w in zip(m.sources, m.weights)], m.val_fraction

        sources, val_fraction = rank0_result(default_spec)
        mix = made.get("mix") or pdata.Mixture([pdata.Source(p, w, d, name=n) for p, w, d, n in sources],
                                               val_fraction=val_fraction)
    elif section.mixture == "custom":
        mix = pdata.Mixture([pdata.Source(Path(s["path"]).expanduser(), float(s.get("weight", 1.0)), s.get("domain"))
                             for s in section.sources])
    else:
        mix = getattr(pdata.presets, section.mixture)(section.root)
    if section.mixture != "default":
        expected_fp = rank0_result(lambda: pdata.tokenizer_fingerprint(tok))
    err = None
    try:  # each rank checks a share of the shards; all ranks fail together, naming the file
        _check_shards(mix.sources[rank::world_size], expected_fp, tok, deep=section.verify_checksums)
    except ValueError as e:
        err = e
    agree_on_error(err)
    meta_vocab = mix.sources[0].shard().meta.get("tokenizer", {}).get("vocab_size")
    if meta_vocab and meta_vocab > vocab_size:
        raise ValueError(f"the data was tokenized with a vocabulary of {meta_vocab} tokens but the model has "
                         f"vocab_size={vocab_size}; use the model's tokenizer (--data.tokenizer) or a bigger model")
    loader = pdata.build_loader(mix, seq_len=section.seq_len, micro_batch_size=section.micro_batch_size,
                                rank=data_rank, world_size=data_world_size, seed=section.seed, packing=section.packing,
                                loss_mask_prompt=section.loss_mask_prompt, bfd_overlap=section.bfd_overlap,
                                min_doc_tokens=section.min_doc_tokens)
    val = None
    if section.val_batches > 0:
        val = pdata.build_val_loader(mix, seq_len=section.seq_len, micro_batch_size=section.micro_batch_size,
                                     rank=data_rank, world_size=data_world_size,
                                     max_rows_per_domain=section.val_batches)
    return TrainData(loader=loader, val_loader=val, domains=list(mix.domains), tokenizer_path=tok, mixture=mix)


def _check_shards(sources, expected_fp: str | None, tok: str, *, deep: bool) -> None:
    """Refuse damaged shards at start: sizes / index always, every byte's CRC-32 when deep (shards.verify_shard),
    and the tokenizer fingerprint in meta.json against the run's tokenizer."""
    from prism_fast.data.shards import open_shard, verify_shard  # noqa: PLC0415
    for s in sources:
        try:
            (verify_shard if deep else open_shard)(s.path, expected_fp)
        except ValueError as e:
            raise UserError(f"{e} (run tokenizer: {tok})" if "another tokenizer" in str(e) else str(e)) from None


def as_packed_row(batch: dict) -> dict:
    """Keep only what the model consumes, in the model's layout (B == 1 packed row)."""
    return {k: batch[k] for k in ("input_ids", "labels", "position_ids", "cu_seqlens", "domain_ids")
            if k in batch} | ({"cu_seqlens": batch["cu_seqlens"].to(torch.int32)} if "cu_seqlens" in batch else {})
