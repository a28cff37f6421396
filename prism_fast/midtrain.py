"""Entry point: `torchrun --nproc_per_node=N -m prism_fast.midtrain [--recipe NAME] [--section.field=value ...]`.

Without arguments it runs the `demo` recipe (SmolLM2-135M on the bundled mixture, ~5 min on 2 CPU cores); plain
`python -m prism_fast.midtrain` works too (a 1-rank job). Parse -> build -> train -> close (also on error).
Errors: config, data and checkpoint mistakes print one `error: ...` line on rank 0 and exit 2 (prism_fast.entry;
`--debug` keeps the traceback); `python -m prism_fast.launch` instead of `torchrun` also drops torchrun's own
failure summary. Faults and what survives them: docs/faults.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def parse(argv):
    p = argparse.ArgumentParser(prog="prism_fast.midtrain", description=__doc__.split("\n")[0],
                                epilog="Overrides: --section.field=value, e.g. --train.steps=10 --optim.lr=1e-4")
    p.add_argument("--recipe", default="demo", help="recipe name (--list-recipes shows them)")
    p.add_argument("--list-recipes", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p.parse_known_args(argv)


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    from prism_fast.recipes import RECIPES, get_recipe
    if args.list_recipes:
        print("\n".join(RECIPES))
        return 0
    from prism_fast.train.config import apply_overrides, to_dict
    cfg = apply_overrides(get_recipe(args.recipe)(), overrides)
    if args.print_config:
        import json
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from prism_fast.entry import run_trainer
    from prism_fast.train.trainer import Trainer
    return run_trainer(lambda: Trainer(cfg))


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    sys.exit(run_entry(main))
