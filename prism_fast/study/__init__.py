"""The mini-PRISM study (`python -m prism_fast.study [--quick | --smoke]`, `make study`): the paper's pipeline and
analyses in miniature on one CPU, composed from the project's own entry points.

    base -> MT (bundled Math+Code+Science mixture) -> RL (GRPO) ; base -> RL
    evaluation of base, +MT, +RL, +MT+RL (bundled stand-ins) + held-out loss per domain
    weight change MT vs RL, Base->RL vs MT->RL, update direction, CKA (MT vs MT+RL), interpolation landscape
    REPORT.md: each measured number beside the paper's claim, with a verdict

Modules: `modes` (sizes per mode), `cache` (stage keys and the directory protocol that makes a killed or edited
study resume at the right stage), `stages` (the pipeline), `heldout` (the smoke model and held-out loss),
`report` (REPORT.md and plots). See docs/study/README.md.
"""
from prism_fast.study.cache import StageDir, stage_key
from prism_fast.study.modes import MODES
from prism_fast.study.stages import Study

__all__ = ["MODES", "StageDir", "Study", "stage_key"]
