"""Entry point: `torchrun --nproc_per_node=N -m prism_fast.rl [--recipe NAME] [--section.field=value ...]`.

Without arguments it runs the RL `demo` recipe (SmolLM2-135M-Instruct on the bundled easy prompts; a few minutes on
2 CPU cores); plain `python -m prism_fast.rl` works too (a 1-rank job). `--list-recipes` lists the RL recipes only;
`--print-config` prints the resolved config (paper recipes too, without their weights).
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from prism_fast.entry import recipe_main
    from prism_fast.recipes import RL_RECIPES, get_rl_recipe

    def make_trainer(cfg):
        from prism_fast.rl.trainer import RLTrainer  # noqa: PLC0415 (torch + model imports after parsing)
        return RLTrainer(cfg)

    return recipe_main(argv, prog="prism_fast.rl", description=__doc__.split("\n")[0],
                       epilog="Overrides: --section.field=value, e.g. --train.steps=10 --loss.kl_beta=0.05",
                       recipes=RL_RECIPES, get_recipe=get_rl_recipe, make_trainer=make_trainer)


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    sys.exit(run_entry(main))
