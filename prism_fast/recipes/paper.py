"""The paper's mid-training recipe (SPEC section 2, Table 16), shared by the seven per-model recipes.

AdamW lr 5e-5, wd 0.1, betas (0.9, 0.95), eps 1e-10; bf16; cosine: 500 warmup steps then 24,500 cosine steps to
0.1 x peak (25,000 steps); 8,192-token rows, 128 ranks x micro-batch 1 = 1.05M tokens per step (26.2B tokens);
HSDP: replicate 16 x shard 8; MCS mixture. Ours where the paper is silent: grad clip 1.0, concat-and-chunk packing
with document masking, full activation checkpointing, checkpoint every 1,000 steps (keep 3), validation every 500.
"""
from __future__ import annotations

from prism_fast.distributed import ParallelConfig
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import DataSection, JobConfig, ModelSection, TrainSection

STEPS, WARMUP, SEQ_LEN, GLOBAL_BATCH, REPLICATE, SHARD = 25_000, 500, 8192, 128, 16, 8


def paper_recipe(name: str, hf_id: str, *, model_path: str | None = None, data_root: str = "data/prism",
                 mixture: str = "mcs", ac: str = "full") -> JobConfig:
    """model_path defaults to models/<repo name>; data_root holds one prepared shard dir per MCS source."""
    return JobConfig(
        model=ModelSection(path=model_path or f"models/{hf_id.split('/')[-1]}", hf_id=hf_id),
        data=DataSection(mixture=mixture, root=data_root, seq_len=SEQ_LEN, micro_batch_size=1, val_every=500,
                         val_batches=16),
        train=TrainSection(steps=STEPS, global_batch_size=GLOBAL_BATCH, run_dir=f"runs/{name}"),
        optim=optim.Config(lr=5e-5, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-10, grad_clip=1.0),
        schedule=lr_schedules.Config(name="cosine", warmup_steps=WARMUP, min_lr_ratio=0.1),
        parallel=ParallelConfig(dp_replicate=REPLICATE, dp_shard=SHARD, param_dtype="bf16", reduce_dtype="fp32",
                                ac=ac, expected_world_size=REPLICATE * SHARD),
        checkpoint=checkpoint.Config(interval=1000, keep_last=3, resume="auto", export_dtype="bf16"),
        metrics=metrics.Config(log_every=10, progress_bar=True),
    )
