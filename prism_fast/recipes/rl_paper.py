"""The paper's RL recipe (SPEC section 3, Table 21), one function per paper model.

64 prompts x G = 16 rollouts per step, temperature 1.0, top-p 1.0, 1,000 steps, 16k context (2k prompt + 14k
response), AdamW lr 5e-7 with linear decay (to 0), KL beta 0.05 (k3, in the loss) to a Polyak reference, token-level
normalization, PPO clip 0.2 / 0.2, truncated IS C = 2.0, advantages (r - mean) / (std + eps) per group of 16,
the think-format gate. Ours where the paper is silent: Polyak tau 0.05 every 10 steps, grad clip 1.0, zero-std
groups dropped from the update, truncation / repetition penalties 0.5 / 0.1 subtracted (sizes unstated), full activation
checkpointing, bf16 compute with fp32 master weights, checkpoint every 50 steps.
The policy starts from the mid-training export of the same model (runs/<name>/export, written by
`torchrun -m prism_fast.midtrain --recipe <name>`); prompts from the difficulty filter (data/rl/unbalanced.jsonl:
`python -m prism_fast.rl.filter`). `--print-config` works without either.
"""
from __future__ import annotations

from prism_fast.distributed import ParallelConfig
from prism_fast.rl.config import (LossSection, PromptSection, RefSection, RewardSection, RLJobConfig, RLTrainSection,
                                  RolloutSection)
from prism_fast.train import checkpoint, lr_schedules, metrics, optim
from prism_fast.train.config import ModelSection

CONTEXT, PROMPT_TOKENS = 16_384, 2_048


def rl_paper_recipe(name: str, hf_id: str, *, prompts: str = "data/rl/unbalanced.jsonl") -> RLJobConfig:
    return RLJobConfig(
        model=ModelSection(path=f"runs/{name}/export", hf_id=hf_id),
        prompts=PromptSection(files=[prompts], max_prompt_tokens=PROMPT_TOKENS),
        rollout=RolloutSection(prompts_per_step=64, group_size=16, temperature=1.0, top_p=1.0,
                               max_new_tokens=CONTEXT - PROMPT_TOKENS, max_batch=256),
        reward=RewardSection(require_think=True, timeout_s=10.0, truncation_penalty=0.5, repetition_penalty=0.1),
        loss=LossSection(variant="grpo", agg="token", eps_low=0.2, eps_high=0.2, kl_beta=0.05, kl_estimator="k3",
                         tis_cap=2.0, adv_scale="std"),
        ref=RefSection(tau=0.05, update_every=10),
        train=RLTrainSection(steps=1000, run_dir=f"runs/rl_{name}", max_tokens_per_micro=CONTEXT),
        optim=optim.Config(lr=5e-7, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0),
        schedule=lr_schedules.Config(name="linear", warmup_steps=0, min_lr_ratio=0.0),
        parallel=ParallelConfig(param_dtype="bf16", reduce_dtype="fp32", ac="full"),
        checkpoint=checkpoint.Config(interval=50, keep_last=3, resume="auto", export_dtype="bf16"),
        metrics=metrics.Config(log_every=1, progress_bar=True),
    )


PAPER_MODELS = {
    "granite_3_3_8b": "ibm-granite/granite-3.3-8b-base",
    "granite_4_0_micro": "ibm-granite/granite-4.0-micro-base",
    "granite_4_0_h_micro": "ibm-granite/granite-4.0-h-micro-base",
    "llama_3_1_8b": "meta-llama/Llama-3.1-8B",
    "mistral_7b": "mistralai/Mistral-7B-v0.1",
    "mistral_small_24b": "mistralai/Mistral-Small-24B-Base-2501",
    "nemotron_h_8b": "nvidia/Nemotron-H-8B-Base-8K",
}


def recipe_for(name: str):
    """The recipe function of paper model `name` (a key of PAPER_MODELS)."""
    return lambda: rl_paper_recipe(name, PAPER_MODELS[name])
