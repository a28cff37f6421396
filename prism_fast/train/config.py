"""Config tree for `prism_fast.midtrain`: nested dataclasses (one per component, each with `build()`), a recipe is a
Python function returning the root `JobConfig`, and the CLI only adds `--recipe NAME` plus flat
`--section.field=value` overrides (torchtitan's config style; no YAML layering).

Overrides are parsed with the field's annotated type: int, float, str, bool (true/false/1/0/yes/no), None ("none"
/ "null" for Optional fields), tuples/lists/dicts as JSON (`--optim.betas=[0.9,0.95]`). Unknown sections or
fields raise ValueError listing the valid names. After overrides the tree is re-validated (`__post_init__` runs
again through dataclasses.replace), then frozen by convention: the trainer never mutates it.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def _is_dc(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _parse_value(text: str, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _parse_value(text, a, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: cannot parse {text!r} as {tp}: {errors}")
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean (true/false), got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    if origin in (tuple, list, dict) or tp in (tuple, list, dict):
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: expected JSON for {tp}, e.g. [0.9, 0.95] or {{\"k\": 1}}; got {text!r}") \
                from None
        return tuple(val) if (origin or tp) is tuple else val
    raise ValueError(f"{where}: fields of type {tp} cannot be set from the command line")


def _type_hints(obj) -> dict:
    return typing.get_type_hints(type(obj))


def apply_overrides(cfg, overrides: list[str]):
    """Return a new config tree with `--section.field=value` (or `--section.field value`) overrides applied."""
    pairs: list[tuple[str, str]] = []
    it = iter(overrides)
    for tok in it:
        if not tok.startswith("--"):
            raise ValueError(f"unexpected argument {tok!r}; overrides look like --section.field=value")
        key, eq, val = tok[2:].partition("=")
        if not eq:
            try:
                val = next(it)
            except StopIteration:
                raise ValueError(f"override --{key} has no value; write --{key}=VALUE") from None
        pairs.append((key, val))
    tree: dict = {}
    for key, val in pairs:  # later overrides of the same field win
        parts = key.replace("-", "_").split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--{key}: {p!r} was already set as a field")
        node[parts[-1]] = (val, key)
    return _apply(cfg, tree)


def _apply(node, changes: dict):
    """Apply all changes of one dataclass node at once (cross-field checks see the final values)."""
    names = [f.name for f in dataclasses.fields(node)]
    new = {}
    for head, change in changes.items():
        if head not in names:
            full = change[1] if isinstance(change, tuple) else f"{head}..."
            kind = "field" if isinstance(change, tuple) else "section"
            raise ValueError(f"--{full}: unknown {kind} {head!r}; valid: {', '.join(names)}")
        cur = getattr(node, head)
        if isinstance(change, dict):
            if not _is_dc(cur):
                raise ValueError(f"{head!r} is a field, not a section; write --...{head}=VALUE")
            new[head] = _apply(cur, change)
        else:
            text, full = change
            if _is_dc(cur):
                sub = [f.name for f in dataclasses.fields(cur)]
                raise ValueError(f"--{full}: {head!r} is a section; set one of its fields: {', '.join(sub)}")
            new[head] = _parse_value(text, _type_hints(node)[head], f"--{full}")
    return dataclasses.replace(node, **new)  # re-runs __post_init__: validation after all overrides


def to_dict(cfg) -> dict[str, Any]:
    def conv(x):
        if _is_dc(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, Path):
            return str(x)
        return x
    return conv(cfg)


def save_json(cfg, path: Path):
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# The run's config tree. Component configs live with their owners (optim.Config, lr_schedules.Config, ...).
# ---------------------------------------------------------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402

from prism_fast.distributed.parallelize import Config as _ParallelConfig  # noqa: E402
from prism_fast.ops.kernel_choice import KernelConfig  # noqa: E402
from prism_fast.ranges import check_ranges, ranged  # noqa: E402
from prism_fast.train import checkpoint as _ckpt, lr_schedules as _sched, metrics as _metrics, optim as _optim  # noqa: E402,E501


@dataclass(kw_only=True, slots=True)
class ModelSection:
    path: str = "smollm2"
    """smollm2 (the bundled SmolLM2-135M-Instruct GGUF) | an HF model directory | a .gguf file | tiny (random)."""
    hf_id: str | None = None
    """Hugging Face id the recipe expects at `path` (only used in the 'missing files' error message)."""
    tiny_type: str = "llama"
    """path=tiny: model family of prism_fast.models.tiny_config."""
    tiny_overrides: dict = field(default_factory=dict)
    """path=tiny: config.json overrides, e.g. {"num_hidden_layers": 2}."""
    init_seed: int = 0
    """Seed of the random init (path=tiny); identical on every rank and for every world size."""

    def check_files(self):
        """Called at trainer build (after CLI overrides), not in __post_init__: recipes name default paths."""
        if self.path not in ("smollm2", "tiny"):
            p = Path(self.path).expanduser()
            if not p.exists():
                fetch = (f"`huggingface-cli download {self.hf_id} --local-dir {self.path}` and rerun, or " if self.hf_id
                         else "")
                raise ValueError(f"model.path={self.path!r} does not exist; {fetch}pass --model.path=DIR (an HF "
                                 f"directory with config.json + *.safetensors, or a .gguf file)")
            if p.is_dir() and not (p / "config.json").exists():
                raise ValueError(f"model.path={self.path!r} has no config.json; point it at an HF model directory")


@dataclass(kw_only=True, slots=True)
class DataSection:
    mixture: str = "default"
    """default (bundled corpora, prepared with the model's tokenizer) | mcs | mc | math_only (SPEC mixtures over
    prepared shard dirs under `root`) | custom (`sources`)."""
    sources: list = field(default_factory=list)
    """mixture=custom: [{"path": SHARD_DIR, "weight": w, "domain": name}, ...] (JSON on the command line)."""
    root: str | None = None
    """Directory holding one prepared shard dir per source (mixtures other than default)."""
    cache_dir: str = "~/.cache/prism_fast/default_corpus"
    """Where the bundled corpora are tokenized (once; reused while the tokenizer fingerprint matches)."""
    tokenizer: str | None = None
    """Tokenizer for the default corpus (HF dir or .gguf); None = the model's path (tiny: the SmolLM2 GGUF)."""
    seq_len: int = ranged(2048, ge=8)
    """Tokens per packed row (PRISM: 8192)."""
    micro_batch_size: int = ranged(1, ge=1)
    """Packed rows per rank per micro step (rows are concatenated into one [1, B*L] packed row for the model)."""
    packing: str = "concat"
    """concat (concat-and-chunk with document masking) | bfd (best-fit-decreasing: long-context phase)."""
    bfd_overlap: int = ranged(0, ge=0)
    """packing=bfd: documents longer than seq_len become chunks of seq_len overlapping by this many tokens."""
    min_doc_tokens: int = ranged(0, ge=0)
    """packing=bfd: drop training documents shorter than this (long-context phase: short-document filtering)."""
    loss_mask_prompt: bool = False
    seed: int = 0
    val_every: int = ranged(0, ge=0)
    """Held-out validation loss per domain every N steps (0 = only at start and end if val_batches > 0)."""
    val_batches: int = ranged(4, ge=0)
    """Validation rows per domain (split across ranks). 0 disables validation."""
    verify_checksums: bool = True
    """At start, read every shard byte against the CRC-32s in its meta.json (split across ranks) and refuse a
    damaged shard naming the file. false = sizes / index / tokenizer checks only (for corpora of many GB)."""

    def __post_init__(self):
        if self.mixture not in ("default", "mcs", "mc", "math_only", "custom"):
            raise ValueError(f"data.mixture={self.mixture!r}; use default | mcs | mc | math_only | custom")
        if (self.mixture == "custom") != bool(self.sources):
            raise ValueError("data.sources must be given exactly when data.mixture=custom, e.g. "
                             "--data.sources='[{\"path\": \"shards/web\", \"weight\": 1.0, \"domain\": \"general\"}]'")
        check_ranges(self, "data")
        if self.packing not in ("concat", "bfd"):
            raise ValueError(f"data.packing={self.packing!r}; use concat | bfd")
        if (self.bfd_overlap or self.min_doc_tokens) and self.packing != "bfd":
            raise ValueError("data.bfd_overlap / data.min_doc_tokens need --data.packing=bfd")
        if not 0 <= self.bfd_overlap < self.seq_len:
            raise ValueError(f"data.bfd_overlap={self.bfd_overlap} must be in [0, data.seq_len={self.seq_len})")

    def check_files(self):
        if self.mixture == "default":
            return
        if self.mixture == "custom":
            missing = [s["path"] for s in self.sources if not Path(s["path"]).expanduser().is_dir()]
            if missing:
                raise ValueError(f"data.sources: shard dirs {missing} do not exist; make them with `python -m "
                                 f"prism_fast.data prepare --input FILES --tokenizer MODEL --out DIR`")
            return
        from prism_fast.data.presets import percentages  # noqa: PLC0415
        root = Path(self.root).expanduser() if self.root else None
        missing = [n for n in percentages(self.mixture) if root is None or not (root / n).is_dir()]
        if missing:
            raise ValueError(f"data.mixture={self.mixture} needs one prepared shard dir per source under --data.root "
                             f"(now {self.root!r}); missing: {', '.join(missing)}. Make each with `python -m "
                             f"prism_fast.data prepare --input FILES --tokenizer MODEL --out ROOT/<source>`")


@dataclass(kw_only=True, slots=True)
class TrainSection:
    steps: int = ranged(100, ge=1)
    """Optimizer steps (PRISM: 25,000)."""
    global_batch_size: int = ranged(8, ge=1)
    """Packed rows of data.seq_len tokens per optimizer step, over all ranks (PRISM: 128 x 8192 tokens).
    Must be a multiple of data.micro_batch_size x world size; the quotient is the gradient-accumulation count."""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda."""
    run_dir: str = "runs/midtrain"
    """Checkpoints, metrics.jsonl, config.json and the export go here."""
    max_nonfinite: int = ranged(3, ge=1)
    """Stop after this many consecutive non-finite steps (each is skipped, not applied)."""
    threads: int = ranged(0, ge=0)
    """torch intra-op threads per rank (0 = torch default)."""
    dist_timeout_s: int = ranged(1800, ge=1)
    """Process-group timeout: a collective waiting longer than this for a hung or dead rank fails (one line,
    exit 1) instead of hanging. torchrun stops the other ranks as soon as one dies; this covers hung ranks."""
    trainable: str = "all"
    """all | attention (the paper's attention-only long-context variant: only the attention projections train;
    frozen parameters get no gradients and no optimizer state)."""
    keep_host_memory: bool = True
    """CPU runs: keep freed host memory for reuse instead of returning it to the kernel (glibc mallopt; see
    train/host_allocator.py). Saves the page faults of re-allocating MB-sized tensors every step; RSS stays at
    its peak instead of shrinking between steps."""

    def __post_init__(self):
        check_ranges(self, "train")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device={self.device!r}; use auto | cpu | cuda")
        if self.trainable not in ("all", "attention"):
            raise ValueError(f"train.trainable={self.trainable!r}; use all | attention")


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """Root of the tree (torchtitan's Trainer.Config)."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: _optim.Config = field(default_factory=_optim.Config)
    schedule: _sched.Config = field(default_factory=_sched.Config)
    parallel: _ParallelConfig = field(default_factory=_ParallelConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    """Kernel backend per op ("auto" or a name; ops/kernel_choice.py). Resolved once at model build; the run's
    config.json records the resolved names."""
    checkpoint: _ckpt.Config = field(default_factory=_ckpt.Config)
    metrics: _metrics.Config = field(default_factory=_metrics.Config)

    def __post_init__(self):
        if self.schedule.warmup_steps >= self.train.steps:
            raise ValueError(f"schedule.warmup_steps={self.schedule.warmup_steps} must be < train.steps="
                             f"{self.train.steps}")

    def validate(self, world_size: int) -> int:
        """Launch-time checks (after CLI overrides): model / data files, mesh vs world size, batch divisibility.
        Returns the gradient-accumulation count."""
        self.model.check_files()
        self.data.check_files()
        self.parallel.build(world_size)
        return self.grad_accum(world_size // self.parallel.cp)

    def grad_accum(self, world_size: int) -> int:
        """Micro steps per optimizer step; ValueError naming the fix when the batch does not divide.
        world_size: the data-parallel ranks (context-parallel ranks share rows)."""
        per_micro = self.data.micro_batch_size * world_size
        if self.train.global_batch_size % per_micro:
            ok = [k * per_micro for k in range(1, 4)]
            raise ValueError(f"train.global_batch_size={self.train.global_batch_size} is not a multiple of "
                             f"data.micro_batch_size ({self.data.micro_batch_size}) x world size ({world_size}); "
                             f"use e.g. --train.global_batch_size={ok[0]} (or {ok[1]}, {ok[2]})")
        return self.train.global_batch_size // per_micro
