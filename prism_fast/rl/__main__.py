"""Entry point: `torchrun --nproc_per_node=N -m prism_fast.rl [--recipe NAME] [--section.field=value ...]`.

Without arguments it runs the RL `demo` recipe (SmolLM2-135M-Instruct on the bundled easy prompts; a few minutes on
2 CPU cores); plain `python -m prism_fast.rl` works too (a 1-rank job). `--list-recipes` lists the RL recipes only;
`--print-config` prints the resolved config (paper recipes too, without their weights).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse(argv):
    p = argparse.ArgumentParser(prog="prism_fast.rl", description=__doc__.split("\n")[0],
                                epilog="Overrides: --section.field=value, e.g. --train.steps=10 --loss.kl_beta=0.05")
    p.add_argument("--recipe", default="demo", help="RL recipe name (--list-recipes shows them)")
    p.add_argument("--list-recipes", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p.parse_known_args(argv)


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    from prism_fast.recipes import RL_RECIPES, get_rl_recipe
    if args.list_recipes:
        print("\n".join(RL_RECIPES))
        return 0
    from prism_fast.train.config import apply_overrides, to_dict
    cfg = apply_overrides(get_rl_recipe(args.recipe)(), overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from prism_fast.entry import run_trainer
    from prism_fast.rl.trainer import RLTrainer
    return run_trainer(lambda: RLTrainer(cfg), ok_statuses=("done",))


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    sys.exit(run_entry(main))
