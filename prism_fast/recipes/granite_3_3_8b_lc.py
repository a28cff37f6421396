"""Long-context repair of Granite-3.3 8B (SPEC section 2, paper Table 17), starting from the merged checkpoint.

The 8k mid-training collapses long context (RULER@128k 59.1 -> 6.5); the paper restores it with a linear merge
(0.15 x base + 0.85 x mid-trained) followed by this run: 1,000 steps at 128k tokens per row, AdamW lr 5e-5 (same
betas / wd / eps as mid-training), warmup 100 then exponential decay to 0, context parallelism 4 x data-parallel
shard 4 x replicate 9 (144 ranks), full activation checkpointing, all parameters or attention only. The pipeline:

    torchrun ... -m prism_fast.midtrain --recipe granite_3_3_8b                  # 8k mid-training -> runs/.../export
    python -m prism_fast.merge --a models/granite-3.3-8b-base --b runs/granite_3_3_8b/export --weight 0.15 \\
        --out runs/granite_3_3_8b_merged
    torchrun --nnodes 18 --nproc_per_node 8 ... -m prism_fast.midtrain --recipe granite_3_3_8b_lc \\
        [--train.trainable=attention]
    python -m prism_fast.midtrain --recipe granite_3_3_8b_lc --print-config      # resolved config, no weights

Data (ours where the paper is silent): the long-document sources of the PRISM pool (web, math web, code
repositories, long reasoning traces), each a prepared shard dir under `data_root`; documents shorter than
MIN_DOC_TOKENS are dropped (short-document filtering), longer than 128k are cut into 128k chunks overlapping by
OVERLAP tokens, and the chunks are packed best-fit-decreasing into 128k rows (data.packing=bfd). One 128k row per
data-parallel rank per step (36 rows, 4.7M tokens). Checkpoint every 250 steps (ours).
"""
from __future__ import annotations

from prism_fast.distributed import ParallelConfig
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import DataSection, JobConfig, ModelSection, TrainSection

STEPS, WARMUP, SEQ_LEN, CP, SHARD, REPLICATE = 1000, 100, 131_072, 4, 4, 9
MIN_DOC_TOKENS, OVERLAP = 8192, 1024
# source -> (domain, sampling weight (ours: the MCS percentages of the long-document sources))
LC_SOURCES = {"dclm_edu": ("general", 5.0), "megamath_web_pro": ("math", 20.0), "starcoder2": ("code", 13.75),
              "refinecode": ("code", 13.75), "openthoughts3_science": ("science", 7.75), "mot_math": ("math", 7.0)}


def granite_3_3_8b_lc(model_path: str = "runs/granite_3_3_8b_merged", data_root: str = "data/prism_lc",
                      trainable: str = "all") -> JobConfig:
    """model_path: the merged HF directory (python -m prism_fast.merge); data_root: one shard dir per LC_SOURCES
    name; trainable: "all" or "attention" (the paper's two variants)."""
    dp_ranks = SHARD * REPLICATE
    return JobConfig(
        model=ModelSection(path=model_path, hf_id=None),
        data=DataSection(mixture="custom", sources=[{"path": f"{data_root}/{name}", "weight": w, "domain": dom}
                                                    for name, (dom, w) in LC_SOURCES.items()],
                         seq_len=SEQ_LEN, micro_batch_size=1, packing="bfd", bfd_overlap=OVERLAP,
                         min_doc_tokens=MIN_DOC_TOKENS, val_every=250, val_batches=4),
        train=TrainSection(steps=STEPS, global_batch_size=dp_ranks, run_dir="runs/granite_3_3_8b_lc",
                           trainable=trainable),
        optim=optim.Config(lr=5e-5, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-10, grad_clip=1.0),
        schedule=lr_schedules.Config(name="exponential", warmup_steps=WARMUP, min_lr_ratio=0.0),
        parallel=ParallelConfig(dp_replicate=REPLICATE, dp_shard=SHARD, cp=CP, param_dtype="bf16",
                                reduce_dtype="fp32", ac="full", expected_world_size=REPLICATE * SHARD * CP),
        checkpoint=checkpoint.Config(interval=250, keep_last=2, resume="auto", export_dtype="bf16"),
        metrics=metrics.Config(log_every=10, progress_bar=True),
    )
