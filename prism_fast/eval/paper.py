"""The paper's headline numbers (SPEC section 4), for `compare` to print beside a run of the same model.

Only the domain-weighted AVG (avg_paper: mean of Code, Math, GPQA) per stage is recorded here: base -> +MT ->
+MT+RL, in percent. `aliases` are lower-case substrings matched against the evaluated model's path or name.
"""
from __future__ import annotations

PAPER_AVG = {
    "Granite-3.3 8B": {"aliases": ("granite-3.3-8b",), "base": 11.19, "mt": 29.48, "mt_rl": 41.76},
    "LLaMA-3.1 8B": {"aliases": ("llama-3.1-8b",), "base": 7.49, "mt": 21.07, "mt_rl": 29.69},
    "Mistral-7B v0.1": {"aliases": ("mistral-7b-v0.1",), "base": 9.20, "mt": 25.05, "mt_rl": 35.14},
}


def paper_model(name: str) -> str | None:
    """The paper's model name whose alias occurs in `name` (a path or model id), else None."""
    low = name.lower().replace("_", "-")
    return next((m for m, row in PAPER_AVG.items() if any(a in low for a in row["aliases"])), None)
