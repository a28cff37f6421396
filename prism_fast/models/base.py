"""CausalLM: the base class of every family: embeddings -> blocks -> final norm -> LM head / fused loss / logprobs.

How families plug in (hybrid families included): build your per-layer blocks (see models/layers.py for the block
interface) and call `CausalLM.__init__(cfg, blocks, prefix=..., embed_name=..., norm_name=...)` so that parameter
names are the HF checkpoint names (llama: model.embed_tokens / model.layers / model.norm; nemotron_h:
backbone.embeddings / backbone.layers / backbone.norm_f). Everything else (packed batches, positions, RoPE,
caches, loss, logprobs, hidden states, FLOPs, saving) is shared. A family whose final norm is not a plain RMSNorm
passes its own module as `norm`.
Unusual: the loss / logprobs are computed INSIDE forward (fused linear + CE over chunks, never the whole [N, V]
logits), so FSDP2's root pre-forward hook has the lm_head weight gathered when it is needed.
Kernel backends are chosen once (`configure_kernels`, called by build_model / from_pretrained / the trainer) and
held as `model.kernels` (a frozen ops.KernelChoice); every submodule with a `use_kernels(choice)` method keeps
the names it needs and passes them to the ops. Moving the model (.to / .cuda / to_empty) to another device type
(or dtype, unless a compute dtype was given) resolves the same request again for the new target, at the move --
so an explicit choice that cannot run there fails at once, never in the middle of a run.
"""
from __future__ import annotations

import torch
from torch import nn

from prism_fast.models.cache import ModelCache
from prism_fast.models.config import ModelConfig
from prism_fast.models.layers import ForwardContext, RMSNorm, Rotary, is_fp8_linear
from prism_fast.ops import KernelChoice, fused_linear_cross_entropy, fused_linear_logprobs, resolve_kernels


def check_cu_seqlens(cu_seqlens: torch.Tensor, B: int, T: int) -> None:
    if B != 1:
        raise ValueError(f"packed batches (cu_seqlens) need batch size 1, got input_ids of shape [{B}, {T}]: "
                         "concatenate the documents into one row")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-D int32 tensor [n_docs + 1] starting at 0")
    c = cu_seqlens.tolist()
    if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c[:-1], c[1:])):
        raise ValueError(f"cu_seqlens must increase from 0 to T={T}, got {c[:4]}...{c[-2:]}")


def _rows(x_N: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """[B * T] per-token values -> [B, T] as a tensor of its own, not a view: FSDP2's root module warns on (and an
    in-place op by the caller would silently drop the pre-backward hook of) a returned view. Costs one [B, T] copy,
    nothing next to the LM head that produced it."""
    return x_N.reshape(B, T).clone()


class CausalLM(nn.Module):
    """Decoder-only LM. See the module docstring and models/README (docs/models.md) for the forward contract."""

    def __init__(self, cfg: ModelConfig, blocks: list[nn.Module], *, prefix: str = "model",
                 embed_name: str = "embed_tokens", norm_name: str = "norm", norm: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self._prefix, self._embed_name = prefix, embed_name
        inner = nn.Module()
        setattr(inner, embed_name, nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=None))
        inner.layers = nn.ModuleList(blocks)
        setattr(inner, norm_name, norm if norm is not None else RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
        self._norm_name = norm_name
        setattr(self, prefix, inner)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg) if cfg.position_embedding_type == "rope" and cfg.num_attention_layers else None
        self.kernels: KernelChoice = self.configure_kernels(None, device="cpu")
        """Resolved kernel backends; build_model / from_pretrained / the trainer re-resolve them for the real
        device, dtype and build options (configure_kernels)."""
        self.tie_weights()

    def configure_kernels(self, kernels=None, *, device=None, dtype=None, compile: bool = False,
                          fp8: bool | None = None) -> KernelChoice:
        """Resolve `kernels` (ops.KernelConfig, dict of field -> name, KernelChoice or None = all auto) for the
        device / compute dtype this model runs with, and hand the names to every submodule (`use_kernels`).
        device / dtype default to the LM head weight's (device must then not be meta). fp8 defaults to whether
        any submodule is a registered FP8 linear (layers.is_fp8_linear): then q/k/v and gate/up run one module
        call each. ValueError listing the usable backends when a named backend cannot run. Returns the choice."""
        w = self.lm_head.weight
        device = torch.device(device if device is not None else w.device)
        if device.type == "meta":
            raise ValueError("configure_kernels: the model is on the meta device; pass device= (where it will run)")
        if fp8 is None:
            fp8 = any(is_fp8_linear(m) for m in self.modules())
        choice = resolve_kernels(kernels, device=device, dtype=dtype or w.dtype, compile=compile, fp8=fp8)
        self._kernel_request = dict(kernels=kernels, dtype=dtype, compile=compile)
        for m in self.modules():
            if m is not self and hasattr(m, "use_kernels"):
                m.use_kernels(choice)
        self.kernels = choice
        return choice

    def _apply(self, fn, recurse=True):
        """Every move (.to / .cuda / .half / to_empty) goes through here: when it changes the device type, or the
        dtype while no compute dtype was given, the kernel request is resolved again for the new target."""
        out = super()._apply(fn, recurse)
        req, w = getattr(self, "_kernel_request", None), self.lm_head.weight
        if req is not None and w.device.type != "meta":
            dtype = str(req["dtype"] or w.dtype).removeprefix("torch.")
            if w.device.type != self.kernels.device or dtype != self.kernels.dtype:
                self.configure_kernels(req["kernels"], device=w.device, dtype=req["dtype"], compile=req["compile"])
        return out

    # ---- module access (names differ per family) ----
    @property
    def backbone_module(self) -> nn.Module:
        return getattr(self, self._prefix)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone_module.layers

    def embed_tokens_module(self) -> nn.Embedding:
        return getattr(self.backbone_module, self._embed_name)

    def final_norm_module(self) -> nn.Module:
        return getattr(self.backbone_module, self._norm_name)

    def lm_head_module(self) -> nn.Linear:
        return self.lm_head

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config says so (call again after assign-loading)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens_module().weight

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh random init (normal(0, std) matrices and embeddings, zero biases, norms 1, family hooks via each
        submodule's `reset_parameters` for non-Linear parameters). For training from scratch and tests."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.tie_weights()

    # ---- forward ----
    def make_context(self, input_ids, position_ids=None, cu_seqlens=None, cache=None, dtype=None,
                     cp=None) -> ForwardContext:
        """Positions (restarting per document when packed, offset by the cache when decoding), RoPE tables,
        attention boundaries and Mamba's seq_idx for one forward. With `cp` (a context_parallel.CPShard) the
        input is this rank's shard of one packed row: position_ids (global, sharded alike) are required and the
        document boundaries come from the shard."""
        B, T = input_ids.shape
        dev = input_ids.device
        if cp is not None:
            if position_ids is None or cu_seqlens is not None or cache is not None:
                raise ValueError("context parallel forward: pass the sharded position_ids and no cu_seqlens / cache "
                                 "(ContextParallel.shard prepares the batch)")
            if "mamba" in self.config.layer_types:
                raise ValueError(f"context parallelism supports dense attention models only; "
                                 f"{self.config.model_type} has Mamba layers: use --parallel.cp=1")
            rope = self.rotary(position_ids, dtype) if self.rotary is not None else None
            return ForwardContext(position_ids=position_ids, rope=rope, attn_cu_seqlens=None, max_seqlen=T, cp=cp)
        seq_idx = None
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens (packed) and cache cannot be combined: decode one batch row per "
                                 "sequence instead")
            # Validation and the longest document need the values on the host: free when the caller passes
            # cu_seqlens on the CPU (the trainer does: the loader built it there), two device-to-host syncs per
            # forward when it is already on the accelerator.
            cu_host = cu_seqlens.to(torch.int32) if cu_seqlens.device.type == "cpu" else None
            check_cu_seqlens(cu_host if cu_host is not None else cu_seqlens, B, T)
            cu_seqlens = cu_seqlens.to(device=dev, dtype=torch.int32, non_blocking=True)
            lengths = cu_seqlens.diff()
            max_seqlen = int((cu_host if cu_host is not None else cu_seqlens).diff().max())   # sync if on device
            seq_idx = torch.repeat_interleave(torch.arange(len(lengths), device=dev, dtype=torch.int32),
                                              lengths.long(), output_size=T)[None]        # [1, T]
            if position_ids is None:
                position_ids = (torch.arange(T, device=dev) - cu_seqlens.long()[seq_idx[0]])[None]
            attn_cu = cu_seqlens
        elif cache is None:
            attn_cu = torch.arange(0, (B + 1) * T, T, device=dev, dtype=torch.int32)
            max_seqlen = T
        else:
            if cache.batch_size != B:
                raise ValueError(f"cache was made for batch size {cache.batch_size}, input has {B} rows")
            if int(cache.seqlens.max()) + T > cache.max_seq_len:                          # host sync
                raise ValueError(f"cache overflow: {int(cache.seqlens.max())} cached + {T} new tokens > "
                                 f"max_seq_len={cache.max_seq_len}; make the cache with a larger max_seq_len")
            attn_cu, max_seqlen = None, T
        if position_ids is None:
            position_ids = torch.arange(T, device=dev)[None].expand(B, T)
            if cache is not None:
                position_ids = position_ids + cache.seqlens[:, None]
        elif position_ids.shape != (B, T):
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must equal input_ids shape {(B, T)}")
        rope = self.rotary(position_ids, dtype) if self.rotary is not None else None
        return ForwardContext(position_ids=position_ids, rope=rope, attn_cu_seqlens=attn_cu, max_seqlen=max_seqlen,
                              cu_seqlens=cu_seqlens, seq_idx=seq_idx, cache=cache)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens_module()(input_ids)
        m = self.config.embedding_multiplier
        return x * m if m != 1.0 else x

    def _check_inputs(self, input_ids):
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [B, T], got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")

    def forward_hidden(self, input_ids, *, position_ids=None, cu_seqlens=None, cache=None,
                       collect=None, cp=None) -> torch.Tensor:
        """Embeddings -> blocks -> final norm: [B, T, D]. `collect` (a list) receives each block's input.
        (Not named `backbone`: nemotron_h's submodule has that name, and a method would shadow it.)"""
        self._check_inputs(input_ids)
        if input_ids.device.type != self.kernels.device:
            raise ValueError(f"the model's kernels were chosen for {self.kernels.device} but the input is on "
                             f"{input_ids.device.type}: move the model to the input's device (or call "
                             f"model.configure_kernels(kernels, device=...))")
        x = self.embed(input_ids)
        ctx = self.make_context(input_ids, position_ids, cu_seqlens, cache, x.dtype, cp)
        for blk in self.blocks:
            if collect is not None:
                collect.append(x)
            x = blk(x, ctx)
        x = self.final_norm_module()(x)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return x

    def forward(self, input_ids, *, position_ids=None, cu_seqlens=None, labels=None, cache=None,
                loss_reduction="mean", ignore_index=-100, return_per_token=False, logprobs_of=None,
                temperature=1.0, return_entropy=False, positions=None, cp=None):
        """input_ids [B, T] -> logits [B, T, V] (model dtype, logits_scaling applied), or with labels [B, T]
        (already shifted: labels[t] is the target of position t) the loss (and per-token losses [B, T]), or with
        logprobs_of [B, T] the fp32 log-probs [B, T] at `temperature` (and entropy [B, T]).
        positions (int64 [N], indices into the flattened B * T rows; log-probs only): run the LM head on those rows
        alone and return [N] tensors. RL needs the response tokens only, and the head is ~20% of a small model's
        per-token FLOPs, so skipping prompt positions saves that share of them (forward and backward).
        cp: context parallelism (distributed.context_parallel): the inputs are this rank's shard of one packed row
        and the loss / log-probs cover this rank's tokens only (the caller reduces over the cp group)."""
        if positions is not None and logprobs_of is None:
            raise ValueError("positions selects rows of the log-prob path: pass logprobs_of too (or no positions)")
        h = self.forward_hidden(input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens, cache=cache, cp=cp)
        B, T, D = h.shape
        w = self.lm_head.weight
        if labels is not None:
            if labels.shape != (B, T):
                raise ValueError(f"labels shape {tuple(labels.shape)} must equal input_ids shape {(B, T)}")
            out = fused_linear_cross_entropy(h.reshape(B * T, D), w, labels.reshape(B * T), ignore_index=ignore_index,
                                             reduction=loss_reduction, logit_scale=1.0 / self.config.logits_scaling,
                                             return_per_token=return_per_token, backend=self.kernels.loss)
            if return_per_token:
                loss, per_tok = out
                return (_rows(loss, B, T) if loss_reduction == "none" else loss), _rows(per_tok, B, T)
            return _rows(out, B, T) if loss_reduction == "none" else out
        if logprobs_of is not None:
            if logprobs_of.shape != (B, T):
                raise ValueError(f"logprobs_of shape {tuple(logprobs_of.shape)} must equal input_ids shape {(B, T)}")
            h_N, tok_N = h.reshape(B * T, D), logprobs_of.reshape(B * T)
            if positions is not None:
                if positions.dim() != 1 or positions.dtype != torch.int64:
                    raise ValueError(f"positions must be an int64 tensor [N] of row indices into B * T = {B * T}, "
                                     f"got {positions.dtype} {tuple(positions.shape)}")
                h_N, tok_N = h_N.index_select(0, positions), tok_N.index_select(0, positions)
            out = fused_linear_logprobs(h_N, w, tok_N, temperature=temperature * self.config.logits_scaling,
                                        return_entropy=return_entropy, backend=self.kernels.logprobs)
            if positions is not None:                   # [N]: own tensors, not views (see _rows)
                return (out[0].clone(), out[1].clone()) if return_entropy else out.clone()
            if return_entropy:
                return _rows(out[0], B, T), _rows(out[1], B, T)
            return _rows(out, B, T)
        return self.logits(h)

    def logits(self, h_BTD: torch.Tensor) -> torch.Tensor:
        """LM head on final hidden states [B, T, D] -> [B, T, V] (logits_scaling applied). Lets generation run the
        head on the last position only."""
        logits = self.lm_head(h_BTD)
        return logits / self.config.logits_scaling if self.config.logits_scaling != 1.0 else logits

    @torch.no_grad()
    def hidden_states(self, input_ids, *, cu_seqlens=None) -> list[torch.Tensor]:
        """HF output_hidden_states convention: num_hidden_layers + 1 tensors [B, T, D]: the embedding output (after
        the multiplier), the outputs of layers 0..L-2, and the last layer's output AFTER the final norm."""
        collect: list[torch.Tensor] = []
        h = self.forward_hidden(input_ids, cu_seqlens=cu_seqlens, collect=collect)
        return collect + [h]

    # ---- inference cache ----
    def new_cache(self, batch_size: int, max_seq_len: int, *, dtype=None, device=None) -> ModelCache:
        """Empty cache for `batch_size` sequences of up to `max_seq_len` tokens (dtype/device default to the
        model's)."""
        p = self.lm_head.weight
        dtype, device = dtype or p.dtype, device or p.device
        layers = [blk.new_cache(batch_size, max_seq_len, dtype, device) if hasattr(blk, "new_cache") else None
                  for blk in self.blocks]
        return ModelCache(layers, torch.zeros(batch_size, dtype=torch.int64, device=device), max_seq_len)

    # ---- accounting ----
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied LM head counts once). exclude_embeddings drops the input embedding table."""
        n = sum(p.numel() for p in self.parameters())                      # parameters() deduplicates tied weights
        if exclude_embeddings:
            n -= self.embed_tokens_module().weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * N + attention, where N = non-embedding parameters PLUS the LM head matmul
        (V * D, counted even when tied, since it is real compute), and attention = 12 * n_attn_layers * H * Dh *
        seq_len / 2 (QK^T and PV, forward + backward, causal half counted). Mamba layers' SSD scan FLOPs are not
        counted (small next to their projections)."""
        cfg = self.config
        n = self.num_params(exclude_embeddings=True)
        if cfg.tie_word_embeddings:
            n += cfg.vocab_size * cfg.hidden_size
        attn = 12 * cfg.num_attention_layers * cfg.num_attention_heads * cfg.head_dim * seq_len / 2
        return 6 * n + attn

    # ---- saving ----
    def save_pretrained(self, path, *, dtype=None, max_shard_size="2GB") -> None:
        """HF directory (config.json + sharded safetensors + index) that transformers loads with equal logits."""
        from prism_fast.models.hf_io import save_pretrained
        save_pretrained(self, path, dtype=dtype, max_shard_size=max_shard_size)
