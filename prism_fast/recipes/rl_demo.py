"""RL `demo` (the default of `torchrun -m prism_fast.rl`): SmolLM2-135M-Instruct (the cached HF directory of
smollm2_hf_dir()) on the bundled easy math and multiple-choice prompts, GRPO with token-level normalization,
clip-higher 0.28, truncated IS (C = 2), no KL (beta 0: no reference pass, fastest), no think gate (the instruct
model never thinks), a short system prompt ("Answer briefly.": short prompts, short answers). 4 prompts x 8
samples of <= 32 tokens per step, 10 steps, fp32 on CPU. A much larger lr than the paper's (2e-5 vs 5e-7) so the
reward moves within minutes on 2 CPU cores.
Update shape for a CPU (bench_rl --quick rollouts, SmolLM2-135M, fp32, 1 thread; docs/rl.md): packed micro-batches
of <= 512 tokens with separate q/k/v and gate/up GEMMs. The fused projection concatenates the weights on every
call (forward and backward), a cost per micro-batch: fused 12.8 / 14.6 / 16.8 s per update at 1024 / 512 / 256
tokens per micro-batch, separate 13.1 / 13.2 / 15.1 s; 512 instead of 1024 lowers the update's peak RSS by ~0.5 GiB.
"""
from prism_fast.distributed import ParallelConfig
from prism_fast.ops.kernel_choice import KernelConfig
from prism_fast.rl.config import (LossSection, PromptSection, RefSection, RewardSection, RLJobConfig, RLTrainSection,
                                  RolloutSection)
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import ModelSection


def rl_demo(run_dir: str = "runs/rl_demo") -> RLJobConfig:
    from prism_fast.models import smollm2_hf_dir
    return RLJobConfig(
        model=ModelSection(path=str(smollm2_hf_dir())),
        prompts=PromptSection(files=["math", "mc"], max_prompt_tokens=256, system_prompt="Answer briefly."),
        rollout=RolloutSection(prompts_per_step=4, group_size=8, max_new_tokens=32, max_batch=64),
        reward=RewardSection(require_think=False, timeout_s=10.0),
        loss=LossSection(kl_beta=0.0, eps_high=0.28, tis_cap=2.0),
        ref=RefSection(tau=0.0, update_every=1),
        train=RLTrainSection(steps=10, run_dir=run_dir, max_tokens_per_micro=512),
        optim=optim.Config(lr=2e-5, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8, grad_clip=1.0),
        schedule=lr_schedules.Config(name="constant"),
        parallel=ParallelConfig(param_dtype="fp32", reduce_dtype="fp32"),
        kernels=KernelConfig(projection="separate"),
        checkpoint=checkpoint.Config(interval=5, keep_last=1, resume="none", export_dtype="bf16"),
        metrics=metrics.Config(log_every=1, progress_bar=True),
    )
