"""Config tree of `prism_fast.rl` (the same system as midtrain: dataclasses, recipes, `--section.field=value`).

The model / optim / schedule / parallel / checkpoint / metrics sections are midtrain's own classes; the RL-specific
ones are prompts, rollout, reward, loss, ref and train. Batch layout: `rollout.prompts_per_step` prompts per optimizer
step over all ranks (a multiple of the world size: each rank owns whole groups), `rollout.group_size` samples each;
one optimizer update per rollout batch (on-policy; paper). The update runs in packed micro-batches of at most
`train.max_tokens_per_micro` tokens; the loss is normalized by the global counts, so this only trades memory for speed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prism_fast.distributed.parallelize import Config as ParallelConfig
from prism_fast.ops.kernel_choice import KernelConfig
from prism_fast.ranges import check_ranges, ranged
from prism_fast.rl.losses import ADV_SCALES, AGGREGATIONS, KL_ESTIMATORS, VARIANTS
from prism_fast.train import checkpoint as ckpt, lr_schedules, metrics, optim
from prism_fast.train.config import ModelSection

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
BUNDLED = ("math", "code", "mc")


def _one_of(where: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"{where}={value!r}; valid: {', '.join(valid)}")


@dataclass(kw_only=True, slots=True)
class PromptSection:
    files: list = field(default_factory=lambda: ["math", "code", "mc"])
    """Prompt JSONL files (DESIGN 10 schema) or names of bundled sets (math | code | mc); all are mixed."""
    system_prompt: str | None = None
    """Prepended as a system message to string prompts (chat template); None = the template's default."""
    max_prompt_tokens: int = ranged(512, ge=1)
    """Longer prompts are dropped at load time (counted and logged)."""
    limit_per_file: int = ranged(0, ge=0)
    """Use only the first K prompts of each file (0 = all)."""
    seed: int = 0
    """Shuffle seed of the prompt order (one permutation per epoch, identical on every rank)."""

    def __post_init__(self):
        if not self.files:
            raise ValueError("prompts.files is empty; name bundled sets (math, code, mc) or JSONL files")
        check_ranges(self, "prompts")

    def resolved_files(self) -> list[Path]:
        out = []
        for f in self.files:
            p = PROMPT_DIR / f"{f}.jsonl" if f in BUNDLED else Path(f).expanduser()
            if not p.is_file():
                raise ValueError(f"prompts.files: {f!r} is neither a bundled set ({', '.join(BUNDLED)}) nor a file")
            out.append(p)
        return out


@dataclass(kw_only=True, slots=True)
class RolloutSection:
    prompts_per_step: int = ranged(8, ge=1)
    """Prompts per optimizer step over all ranks (paper: 64); a multiple of the world size."""
    group_size: int = ranged(8, ge=2)
    """Samples per prompt, G (paper: 16)."""
    max_new_tokens: int = ranged(256, ge=1)
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    top_k: int = ranged(0, ge=0)
    min_p: float = ranged(0.0, ge=0, lt=1)
    max_batch: int = ranged(64, ge=1)
    """Engine: sequences decoded at once."""
    generate_chunks: int = ranged(1, ge=1)
    """Split this rank's prompts into K generate() calls (bounds the engine's cache). Sample streams are keyed by
    the prompt's index within a call, so a 1-rank run with K = W draws exactly the samples of a W-rank run."""

    def __post_init__(self):
        # temperature > 0: RL samples (greedy has no exploration and its log-probs are not the policy's);
        # group_size >= 2: the advantage is a group baseline
        check_ranges(self, "rollout")


@dataclass(kw_only=True, slots=True)
class RewardSection:
    require_think: bool = True
    """Format gate: reward 0 unless `<think> ... </think> answer` (paper). False for models that never think."""
    timeout_s: float = ranged(10.0, gt=0)
    """Per-item wall-clock limit of a verifier (a timed-out item scores 0, reason 'timeout')."""
    truncation_penalty: float = ranged(0.0, ge=0)
    """Subtracted from the reward of a truncated response (a size >= 0; 0 = off)."""
    repetition_penalty: float = ranged(0.0, ge=0)
    """Subtracted times the share of repeated word n-grams (a size >= 0; 0 = off)."""
    repetition_ngram: int = ranged(3, ge=1)
    num_workers: int = ranged(0, ge=0)
    """Verifier worker processes per rank (0 = the Rewarder's default)."""

    def __post_init__(self):
        check_ranges(self, "reward")


@dataclass(kw_only=True, slots=True)
class LossSection:
    variant: str = "grpo"
    """grpo | gspo | cispo (prism_fast.rl.losses)."""
    agg: str = "token"
    """token (paper) | seq-mean-token-mean | seq-mean-token-sum-norm (Dr.GRPO)."""
    eps_low: float = ranged(0.2, ge=0)
    eps_high: float = ranged(0.2, ge=0)
    """Clip range [1 - eps_low, 1 + eps_high]; 0.28 is the clip-higher option."""
    kl_beta: float = ranged(0.0, ge=0)
    """KL penalty in the loss (paper: 0.05) against the reference policy; 0 = no reference model at all."""
    kl_estimator: str = "k3"
    tis_cap: float | None = ranged(2.0, gt=0)
    """Truncated importance sampling cap C (paper: 2.0); None disables it."""
    adv_scale: str = "std"
    """std: (r - mean) / (std + eps) (paper); none: r - mean (Dr.GRPO)."""
    adv_eps: float = ranged(1e-6, gt=0)
    filter_zero_std: bool = True
    """Drop groups whose G rewards are all equal (zero advantage) from the update: less compute; they still count
    in the reward metrics (zero_std_frac)."""
    old_logprobs: str = "detached"
    """detached: pi_old = the trainer's own log-probs, detached (exact: one update per rollout batch, so the policy
    has not moved); recompute: an extra no-grad pass (veRL's recompute), for checking."""

    def __post_init__(self):
        _one_of("loss.variant", self.variant, VARIANTS)
        _one_of("loss.agg", self.agg, AGGREGATIONS)
        _one_of("loss.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _one_of("loss.adv_scale", self.adv_scale, ADV_SCALES)
        _one_of("loss.old_logprobs", self.old_logprobs, ("detached", "recompute"))
        check_ranges(self, "loss")


@dataclass(kw_only=True, slots=True)
class RefSection:
    tau: float = ranged(0.05, ge=0, le=1)
    """Polyak rate: ref = (1 - tau) * ref + tau * policy (paper: soft update, rate unstated; 0 = frozen ref)."""
    update_every: int = ranged(10, ge=1)
    """Apply the Polyak update every k optimizer steps."""

    def __post_init__(self):
        check_ranges(self, "ref")


@dataclass(kw_only=True, slots=True)
class RLTrainSection:
    steps: int = ranged(100, ge=1)
    """Optimizer steps = rollout batches (paper: 1,000)."""
    seed: int = 0
    """Seeds sampling (per step and prompt), so a resumed run regenerates the same rollouts."""
    device: str = "auto"
    run_dir: str = "runs/rl"
    max_tokens_per_micro: int = ranged(4096, ge=1)
    """Packed tokens per forward/backward micro-batch (whole sequences; a longer one gets its own micro-batch)."""
    threads: int = ranged(0, ge=0)
    keep_host_memory: bool = True

    def __post_init__(self):
        check_ranges(self, "train")
        _one_of("train.device", self.device, ("auto", "cpu", "cuda"))


@dataclass(kw_only=True, slots=True)
class RLJobConfig:
    """Root of the RL config tree."""
    model: ModelSection = field(default_factory=ModelSection)
    prompts: PromptSection = field(default_factory=PromptSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    loss: LossSection = field(default_factory=LossSection)
    ref: RefSection = field(default_factory=RefSection)
    train: RLTrainSection = field(default_factory=RLTrainSection)
    optim: optim.Config = field(default_factory=lambda: optim.Config(lr=1e-6, weight_decay=0.0))
    schedule: lr_schedules.Config = field(default_factory=lambda: lr_schedules.Config(name="constant"))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    """Kernel backends (attention, loss, logprobs, ...), resolved once at model build like midtrain's."""
    checkpoint: ckpt.Config = field(default_factory=ckpt.Config)
    metrics: metrics.Config = field(default_factory=lambda: metrics.Config(log_every=1))

    def __post_init__(self):
        if self.schedule.warmup_steps >= self.train.steps:
            raise ValueError(f"schedule.warmup_steps={self.schedule.warmup_steps} must be < train.steps="
                             f"{self.train.steps}")

    def validate(self, world_size: int) -> None:
        """Launch-time checks (after CLI overrides): files, mesh, prompts per rank."""
        self.model.check_files()
        self.prompts.resolved_files()
        self.parallel.build(world_size)
        if self.rollout.prompts_per_step % world_size:
            ok = [world_size * k for k in (1, 2, 4)]
            raise ValueError(f"rollout.prompts_per_step={self.rollout.prompts_per_step} is not a multiple of the "
                             f"world size {world_size} (each rank owns whole groups); use e.g. "
                             f"--rollout.prompts_per_step={ok[0]} (or {ok[1]}, {ok[2]})")
