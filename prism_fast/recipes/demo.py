"""`demo` (the default of `python -m prism_fast.midtrain`): SmolLM2-135M-Instruct, de-quantized from the bundled
GGUF, mid-trained on the bundled default mixture (general / chat / math / code / science): bf16 compute with fp32
master weights where the machine computes bf16 natively (a GPU, or a CPU with AVX512-BF16 / AMX / ARM bf16), fp32
otherwise (distributed/native_bf16.py: bf16 is ~8x slower than fp32 on an AVX2-only CPU), cosine schedule with warmup, held-out loss per domain at the start and the end, a checkpoint
every 14 steps, and an HF export in runs/demo/.

Size: 28 steps x 4 rows x 256 tokens. Measured on this 2-core CPU: ~8.3 s per 1k-token step, ~25 s of GGUF
loading + corpus preparation, ~5.5 s per 2.2 GB checkpoint; the full 28-step run (validation, 2 checkpoints, HF
export included) took 3 min 54 s end to end. Raise --train.steps on a bigger machine.
"""
from prism_fast.distributed import ParallelConfig
from prism_fast.distributed.native_bf16 import default_param_dtype
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import DataSection, JobConfig, ModelSection, TrainSection


def demo(run_dir: str = "runs/demo") -> JobConfig:
    return JobConfig(
        model=ModelSection(path="smollm2"),
        data=DataSection(mixture="default", seq_len=256, micro_batch_size=1, val_batches=1),
        train=TrainSection(steps=28, global_batch_size=4, run_dir=run_dir),
        optim=optim.Config(lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-10, grad_clip=1.0),
        schedule=lr_schedules.Config(name="cosine", warmup_steps=2, min_lr_ratio=0.1),
        parallel=ParallelConfig(param_dtype=default_param_dtype(), reduce_dtype="fp32"),
        checkpoint=checkpoint.Config(interval=14, keep_last=2, resume="none", export_dtype="bf16"),
        metrics=metrics.Config(log_every=2, progress_bar=True),
    )
