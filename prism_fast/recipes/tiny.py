"""`tiny`: a few-million-parameter random llama on the bundled corpora, fp32, for tests (CPU, seconds per run).

vocab 49152 (the SmolLM2 tokenizer the bundled corpora are prepared with), hidden 64, 2 layers, tied embeddings:
~3.3M parameters, almost all in the embedding. Rows of 64 tokens, 4 rows per step, fp32 params (bitwise
comparisons), no progress bar, log every step, no export.
"""
from prism_fast.distributed import ParallelConfig
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import DataSection, JobConfig, ModelSection, TrainSection


def tiny(run_dir: str = "runs/tiny") -> JobConfig:
    return JobConfig(
        model=ModelSection(path="tiny", tiny_type="llama",
                           tiny_overrides={"vocab_size": 49152, "tie_word_embeddings": True}),
        data=DataSection(mixture="default", seq_len=64, micro_batch_size=1, val_batches=0),
        train=TrainSection(steps=8, global_batch_size=4, run_dir=run_dir, threads=1),
        optim=optim.Config(lr=3e-3, weight_decay=0.1, grad_clip=1.0),
        schedule=lr_schedules.Config(name="cosine", warmup_steps=2, min_lr_ratio=0.1),
        parallel=ParallelConfig(param_dtype="fp32", reduce_dtype="fp32"),
        checkpoint=checkpoint.Config(interval=4, keep_last=2, resume="auto", export_final=False),
        metrics=metrics.Config(log_every=1, progress_bar=False),
    )
