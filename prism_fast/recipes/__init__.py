"""Named run configs: each recipe is a Python function returning a JobConfig (torchtitan style; no YAML).

`get_recipe(name)` -> the function; `RECIPES` lists them. Paper recipes (Table 16) validate their model files at
build time and their mesh / batch at launch (JobConfig.grad_accum, parallel.build) with errors naming the fix.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "demo": "demo", "tiny": "tiny",
    "granite_3_3_8b": "granite_3_3_8b", "granite_4_0_micro": "granite_4_0_micro",
    "granite_4_0_h_micro": "granite_4_0_h_micro", "llama_3_1_8b": "llama_3_1_8b", "mistral_7b": "mistral_7b",
    "mistral_small_24b": "mistral_small_24b", "nemotron_h_8b": "nemotron_h_8b",
    "granite_3_3_8b_lc": "granite_3_3_8b_lc",     # long-context repair (Table 17), after the merge
}
RECIPES = tuple(_MODULES)
PAPER_RECIPES = tuple(n for n in RECIPES[2:] if not n.endswith("_lc"))      # the Table 16 mid-training recipes


def get_recipe(name: str):
    """The recipe function `name` (ValueError listing the valid names)."""
    if name not in _MODULES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return getattr(importlib.import_module(f"prism_fast.recipes.{_MODULES[name]}"), name)


# RL recipes (`python -m prism_fast.rl --recipe NAME`): their own namespace, so `demo` / `tiny` mean the RL ones there.
_RL_MODULES = {"demo": ("rl_demo", "rl_demo"), "tiny": ("rl_tiny", "rl_tiny"),
               **{name: ("rl_paper", name) for name in PAPER_RECIPES}}
RL_RECIPES = tuple(_RL_MODULES)


def get_rl_recipe(name: str):
    """The RL recipe function `name` (ValueError listing the valid names)."""
    if name not in _RL_MODULES:
        raise ValueError(f"unknown RL recipe {name!r}; available: {', '.join(RL_RECIPES)}")
    module, fn = _RL_MODULES[name]
    mod = importlib.import_module(f"prism_fast.recipes.{module}")
    return mod.recipe_for(fn) if module == "rl_paper" else getattr(mod, fn)
