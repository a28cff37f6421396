"""Map parameter names of every supported family to analysis components and layer indices.

Families: llama, mistral, granite (model.layers.{i}.self_attn/mlp), granitemoehybrid (adds model.layers.{i}.mamba,
and a fused `shared_mlp.input_linear` = [gate; up] rows), nemotron_h (backbone.* in checkpoints, model.* in
transformers >= 5 modules; `mixer` holds attention, Mamba2 or an ungated MLP depending on the layer).

What is unusual: a fused matrix is split into row pieces so that every family reports the same components --
GraniteMoeHybrid's input_linear [2I, D] is gate = rows [0, I) and up = rows [I, 2I) (the module computes
act(chunk0) * chunk1). An unknown name is an error, never silently dropped (`allow_unclassified=True` files it
under "other").
"""
from __future__ import annotations

import re

# Display order; also the order of tables and plots.
COMPONENTS = ("embed", "q", "k", "v", "o", "gate", "up", "down", "mamba_in_proj", "mamba_conv1d", "mamba_A_dt",
              "mamba_D", "mamba_out_proj", "norm", "lm_head", "other")
# Groups aggregated on top of components (the union of their tensors).
GROUPS = {
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "mamba": ("mamba_in_proj", "mamba_conv1d", "mamba_A_dt", "mamba_D", "mamba_out_proj"),
}

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# (regex on the name, component); first match wins. Matched against the part after "layers.{i}." when present.
_RULES = [
    (r"(self_attn|mixer|attention)\.q_proj\.(weight|bias)$", "q"),
    (r"(self_attn|mixer|attention)\.k_proj\.(weight|bias)$", "k"),
    (r"(self_attn|mixer|attention)\.v_proj\.(weight|bias)$", "v"),
    (r"(self_attn|mixer|attention)\.o_proj\.(weight|bias)$", "o"),
    (r"\bgate_proj\.(weight|bias)$", "gate"),
    (r"\bup_proj\.(weight|bias)$", "up"),
    (r"\bdown_proj\.(weight|bias)$", "down"),
    (r"shared_mlp\.output_linear\.(weight|bias)$", "down"),
    (r"(mamba|mixer)\.in_proj\.(weight|bias)$", "mamba_in_proj"),
    (r"(mamba|mixer)\.out_proj\.(weight|bias)$", "mamba_out_proj"),
    (r"(mamba|mixer)\.conv1d\.(weight|bias)$", "mamba_conv1d"),
    (r"(mamba|mixer)\.(A_log|dt_bias)$", "mamba_A_dt"),
    (r"(mamba|mixer)\.D$", "mamba_D"),
    (r"(^|\.)(\w*norm\w*)\.weight$", "norm"),
    (r"(^|\.)(\w*norm\w*)\.bias$", "norm"),
    (r"(^|\.)(embed_tokens|embeddings)\.weight$", "embed"),
    (r"(^|\.)lm_head\.weight$", "lm_head"),
]
_RULES = [(re.compile(p), c) for p, c in _RULES]
_FUSED_GATE_UP = re.compile(r"shared_mlp\.input_linear\.(weight|bias)$")


def layer_index(name: str) -> int | None:
    """Layer number of a parameter (None for embeddings, final norm and LM head)."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def classify(name: str, shape: tuple[int, ...] | None = None, *, allow_unclassified: bool = False
             ) -> list[tuple[str, int | None, int | None]]:
    """Pieces of a parameter: [(component, row_start, row_end)], rows along dim 0 (None, None = the whole tensor).

    shape is needed only for fused matrices that are split into pieces.
    """
    if _FUSED_GATE_UP.search(name):
        if shape is None or shape[0] % 2:
            raise ValueError(f"{name}: fused gate/up matrix needs an even first dim (got shape {shape})")
        half = shape[0] // 2
        return [("gate", 0, half), ("up", half, shape[0])]
    for pat, comp in _RULES:
        if pat.search(name):
            return [(comp, None, None)]
    if allow_unclassified:
        return [("other", None, None)]
    raise ValueError(f"parameter {name!r} matches no analysis component. Supported families: llama, mistral, "
                     "granite, granitemoehybrid, nemotron_h. Pass allow_unclassified=True (CLI: --allow-unclassified)"
                     " to report it under 'other', or add a rule in prism_fast/analysis/components.py")


def groups_of(component: str) -> list[str]:
    """Aggregate groups a component belongs to (always including "all")."""
    return [g for g, members in GROUPS.items() if component in members] + ["all"]
