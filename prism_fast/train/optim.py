"""AdamW with explicit decay / no-decay parameter groups and an on-device skip of non-finite updates.

What is decayed (paper: AdamW wd 0.1, groups unstated; ours, following Megatron-LM / mamba_ssm):
- decayed: every parameter with ndim >= 2 -- linear weights, embeddings / LM head, Mamba conv1d weights.
- not decayed: ndim < 2 -- RMSNorm / LayerNorm weights, biases, Mamba A_log, D, dt_bias (mamba_ssm marks these
  `_no_weight_decay`). `no_decay_embeddings=True` also exempts the embedding (and an untied LM head).

Skipping a non-finite update without a host sync: the fused AdamW kernel (CPU and CUDA) accepts a `found_inf`
tensor (the GradScaler protocol); when it is non-zero the kernel leaves params, moments and the step count
untouched. `step(found_inf=...)` passes it. Without fused support (some torch builds / dtypes) we fall back to
one `.item()` per step and say so once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from prism_fast.ranges import check_ranges, ranged

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class Config:
    lr: float = ranged(5e-5, gt=0)
    """Peak learning rate (PRISM Table 16: 5e-5)."""
    weight_decay: float = ranged(0.1, ge=0)
    betas: tuple[float, float] = ranged((0.9, 0.95), ge=0, lt=1)
    eps: float = ranged(1e-10, gt=0)
    grad_clip: float = ranged(1.0)
    """Max global grad norm (paper: unstated; 1.0 ours). <= 0 disables clipping (the norm is still computed)."""
    fused: bool = True
    """Use the fused AdamW kernel (CUDA and CPU). Needed for the sync-free non-finite skip."""
    no_decay_embeddings: bool = False

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        check_ranges(self, "optim")

    def build(self, model: torch.nn.Module) -> "AdamW":
        return AdamW(model, self)


TRAINABLE = ("all", "attention")


def set_trainable(model: torch.nn.Module, mode: str = "all") -> dict:
    """Freeze parameters for `train.trainable` (call after parallelize, before building the optimizer).

    "attention": only the parameters of attention modules (q/k/v/o projections and their biases) keep
    requires_grad; embeddings, LM head, norms, MLPs and Mamba mixers are frozen (the paper's attention-only
    long-context variant). Frozen parameters get no gradient (FSDP2 reduce-scatters only what has grads) and no
    AdamW state (param_groups skips them); checkpoints still hold every parameter. Returns counts for logging."""
    if mode not in TRAINABLE:
        raise ValueError(f"train.trainable={mode!r}; use one of {list(TRAINABLE)}")
    from prism_fast.models.layers import Attention  # noqa: PLC0415 (optim is model-agnostic otherwise)
    keep = None
    if mode == "attention":
        keep = {id(p) for m in model.modules() if isinstance(m, Attention) for p in m.parameters()}
        if not keep:
            raise ValueError("train.trainable=attention: the model has no attention layers; use --train.trainable=all")
    n_train = n_frozen = 0
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)
        n_train += p.numel() if p.requires_grad else 0
        n_frozen += 0 if p.requires_grad else p.numel()
    return {"mode": mode, "trainable_params": n_train, "frozen_params": n_frozen}


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_embeddings: bool = False):
    """Split trainable params into (decay, no_decay) groups; returns (groups, names_by_group) for logging."""
    emb_ids = set()
    if no_decay_embeddings:
        for getter in ("embed_tokens_module", "lm_head_module"):
            if hasattr(model, getter):
                emb_ids.update(id(p) for p in getattr(model, getter)().parameters())
    decay, no_decay, dn, nn_ = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and id(p) not in emb_ids:
            decay.append(p), dn.append(name)
        else:
            no_decay.append(p), nn_.append(name)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]], {"decay": dn, "no_decay": nn_}


class AdamW:
    """Thin owner of a torch.optim.AdamW: lr setting, grad clipping, sync-free skip of non-finite steps."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        self.cfg = cfg
        groups, self.group_names = param_groups(model, cfg.weight_decay, cfg.no_decay_embeddings)
        self.params = [p for g in groups for p in g["params"]]
        dev = self.params[0].device.type
        self.fused = bool(cfg.fused) and dev in ("cuda", "cpu")
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, fused=self.fused or None,
                                     foreach=None if self.fused else True)
        self._warned = False
        self._unclip = None          # set by clip_grad_norm, consumed by step (fused path)

    def set_lr(self, lr: float):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def clip_grad_norm(self) -> torch.Tensor:
        """Global L2 grad norm as a plain (replicated) 0-d tensor on device; clips if grad_clip > 0.

        With FSDP2 the grads are DTensors: torch computes the local norms, the DTensor reduction all-reduces
        them, and `full_tensor()` returns the replicated value -- no host sync.
        With the fused AdamW the clip is not a separate pass: the clip factor goes into the kernel's `grad_scale`
        (grads are divided by max(1, norm / max_norm) as they are read), saving one read-modify-write of every
        gradient per step. Otherwise (or on a torch without get_total_norm) the grads are scaled in place here.
        """
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        self._unclip = None
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
        if self.fused and get_total_norm is not None:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = get_total_norm(grads, 2.0, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            if max_norm != float("inf"):
                # clip_grad_norm_'s factor max_norm / (norm + 1e-6), clamped to 1, as a divisor
                self._unclip = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
            return norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def step(self, found_inf: torch.Tensor):
        """found_inf: 0-d float tensor on the param device; 1.0 means skip this update entirely."""
        if self.fused:
            self.opt.grad_scale, self._unclip = self._unclip, None
            self.opt.found_inf = found_inf.to(torch.float32)
            try:
                self.opt.step()
            finally:
                del self.opt.found_inf, self.opt.grad_scale
        else:
            if not self._warned:
                log.warning("optim.fused=False: skipping non-finite updates costs one host sync per step")
                self._warned = True
            if not bool(found_inf.item()):
                self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self):  # for non-DCP callers; DCP uses get_optimizer_state_dict(model, self.opt)
        return self.opt.state_dict()
