"""RL `tiny` (tests): a 2-layer random llama (SmolLM2 vocabulary), fp32 everywhere (bitwise comparisons), 4 prompts x
4 samples of <= 12 tokens per step, KL to a Polyak reference and truncated IS on, checkpoints every 2 steps, no
progress bar. Seconds per step on one CPU core; the reward stays ~0 (random weights), which is not what it tests."""
from prism_fast.distributed import ParallelConfig
from prism_fast.rl.config import (LossSection, PromptSection, RefSection, RewardSection, RLJobConfig, RLTrainSection,
                                  RolloutSection)
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import ModelSection


def rl_tiny(run_dir: str = "runs/rl_tiny") -> RLJobConfig:
    return RLJobConfig(
        model=ModelSection(path="tiny", tiny_type="llama",
                           tiny_overrides={"vocab_size": 49152, "tie_word_embeddings": True}),
        prompts=PromptSection(files=["math", "mc"], limit_per_file=16, max_prompt_tokens=128),
        rollout=RolloutSection(prompts_per_step=4, group_size=4, max_new_tokens=12, max_batch=16),
        reward=RewardSection(require_think=False, timeout_s=5.0, num_workers=1),
        loss=LossSection(kl_beta=0.05, tis_cap=2.0, filter_zero_std=False),
        ref=RefSection(tau=0.5, update_every=2),
        train=RLTrainSection(steps=4, run_dir=run_dir, max_tokens_per_micro=96, threads=1),
        optim=optim.Config(lr=1e-3, weight_decay=0.0, grad_clip=1.0),
        schedule=lr_schedules.Config(name="constant"),
        parallel=ParallelConfig(param_dtype="fp32", reduce_dtype="fp32"),
        checkpoint=checkpoint.Config(interval=2, keep_last=3, resume="auto", export_final=False),
        metrics=metrics.Config(log_every=1, progress_bar=False),
    )
