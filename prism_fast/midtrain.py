"""Entry point: `torchrun --nproc_per_node=N -m prism_fast.midtrain [--recipe NAME] [--section.field=value ...]`.

Without arguments it runs the `demo` recipe (SmolLM2-135M on the bundled mixture, ~5 min on 2 CPU cores); plain
`python -m prism_fast.midtrain` works too (a 1-rank job). Parse -> build -> train -> close (also on error).
Errors: config, data and checkpoint mistakes print one `error: ...` line on rank 0 and exit 2 (prism_fast.entry;
`--debug` keeps the traceback); `python -m prism_fast.launch` instead of `torchrun` also drops torchrun's own
failure summary. Faults and what survives them: docs/faults.md.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from prism_fast.entry import recipe_main
    from prism_fast.recipes import RECIPES, get_recipe

    def make_trainer(cfg):
        from prism_fast.train.trainer import Trainer  # noqa: PLC0415 (torch + model imports after parsing)
        return Trainer(cfg)

    return recipe_main(argv, prog="prism_fast.midtrain", description=__doc__.split("\n")[0],
                       epilog="Overrides: --section.field=value, e.g. --train.steps=10 --optim.lr=1e-4",
                       recipes=RECIPES, get_recipe=get_recipe, make_trainer=make_trainer)


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    sys.exit(run_entry(main))
