"""The paper's three mid-training mixtures (SPEC section 2, paper Table 16) as Mixture presets.

Each source is a shard directory named after it under `root_dir` (root/dclm_edu, root/megamath_web_pro, ...).
Percentages are exactly the paper's sampling percentages; domains follow SPEC's domain totals (chat counts as
"general": MCS = general 10 / math 37 / code 40.5 / science 12.5).
"""
from __future__ import annotations

import os
from pathlib import Path

from prism_fast.data.mixture import Mixture, Source

# name -> (domain, Math-only %, MC %, MCS %); None = not in that mix.
PAPER_SOURCES: dict[str, tuple[str, float | None, float | None, float | None]] = {
    "dclm_edu": ("general", 15, 5, 5),
    "chat": ("general", 10, 5, 5),
    "nemotron_math": ("math", 10, 10, 10),
    "mot_math": ("math", 10, 10, 7),
    "megamath_web_pro": ("math", 55, 27.5, 20),
    "mot_code": ("code", None, 5, 3),
    "opencodereasoning2": ("code", None, 10, 10),
    "refinecode": ("code", None, 13.75, 13.75),
    "starcoder2": ("code", None, 13.75, 13.75),
    "openthoughts3_science": ("science", None, None, 7.75),
    "mot_science": ("science", None, None, 4.75),
}
_COLUMN = {"math_only": 1, "mc": 2, "mcs": 3}


def percentages(mix: str) -> dict[str, float]:
    """{source name: sampling percent} of a paper mix ("math_only", "mc" or "mcs"); sums to 100."""
    if mix not in _COLUMN:
        raise ValueError(f"unknown mix {mix!r}; choose one of {sorted(_COLUMN)}")
    col = _COLUMN[mix]
    return {name: row[col] for name, row in PAPER_SOURCES.items() if row[col] is not None}


def _mixture(mix: str, root_dir: str | os.PathLike, **kw) -> Mixture:
    root = Path(root_dir)
    return Mixture([Source(root / name, pct, PAPER_SOURCES[name][0], name=name)
                    for name, pct in percentages(mix).items()], **kw)


def math_only(root_dir: str | os.PathLike, **kw) -> Mixture:
    """Math-only mix: general 25 / math 75."""
    return _mixture("math_only", root_dir, **kw)


def mc(root_dir: str | os.PathLike, **kw) -> Mixture:
    """Math + Code mix: general 10 / math 47.5 / code 42.5."""
    return _mixture("mc", root_dir, **kw)


def mcs(root_dir: str | os.PathLike, **kw) -> Mixture:
    """Math + Code + Science mix (the default PRISM mix): general 10 / math 37 / code 40.5 / science 12.5."""
    return _mixture("mcs", root_dir, **kw)
