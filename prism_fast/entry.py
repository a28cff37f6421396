"""Shared wrapper of every command-line entry point: a fault prints ONE line, not a traceback per rank.

`run_entry(main, argv)` runs `main(argv)` and maps what escapes it to an exit status:
  - a `UserError` (and the ValueError / FileNotFoundError that config parsing, recipes and file checks raise for
    bad input): `error: <message>` on stderr from rank 0 only, exit 2. Distributed code makes every rank raise
    the same error (`agree_on_error`, `rank0_result` below), so no rank is left waiting in a collective and
    every rank exits 2 quietly while rank 0 speaks.
  - a failed collective (a peer rank died, hung past the process-group timeout, or its connection dropped):
    `error: rank R: ...` from each surviving rank (rank 0 may be the dead one), exit 1.
`--debug` anywhere in argv keeps the full traceback instead. Anything else (a real bug) propagates unchanged.
`run_trainer(make_trainer)` is the shared build -> train -> summary -> close body of trainer entry points
(midtrain, RL): after a failure it closes the process group without the final barrier; `recipe_main` adds the
shared `--recipe` / `--list-recipes` / `--print-config` / override parsing in front of it.

Under plain `torchrun` the launcher adds its own ChildFailedError summary after the line when children exit
non-zero; `python -m prism_fast.launch` (same arguments as torchrun) replaces that with one line and passes
the workers' exit status 2 through (see launch.py).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prism_fast.errors import UserError, describe  # noqa: F401  (re-exported: the trainers import them from here)

T = TypeVar("T")


USER_ERRORS = (UserError, ValueError, FileNotFoundError)
# Phrases of gloo / NCCL / c10d errors raised when a peer is gone or a collective timed out.
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
              "timeout", "socket", "nccl", "gloo", "store")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_collective_failure(e: BaseException) -> bool:
    """True for errors raised by a collective whose peers died, hung or dropped their connection."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and any(p in str(e).lower() for p in _PEER_LOST)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def run_entry(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call main(argv without --debug); map faults to one line + exit status (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        if _rank() == 0:
            print(f"error: {str(e).strip() or type(e).__name__}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:
        if debug or not is_collective_failure(e):
            raise
        print(f"error: rank {_rank()}: a collective failed ({_first_line(e)}): another rank died, hung past "
              f"--train.dist_timeout_s or lost its connection (its own log or the launcher names it); checkpoints "
              f"already written are intact, rerun to resume from the newest", file=sys.stderr, flush=True)
        return 1


def run_trainer(make_trainer: Callable[[], Any], ok_statuses: Sequence[str] = ("done", "preempted")) -> int:
    """Build -> train() -> summary (rank 0) -> close(), the body of every trainer entry point. Exit status 0 when
    train() returns one of ok_statuses, else 1. After a failure the trainer closes with `close(barrier=False)`:
    a peer may be dead or waiting in another collective, so the final barrier could only hang."""
    trainer, ok = None, False
    try:
        trainer = make_trainer()
        status = trainer.train()
        trainer.metrics.close()  # progress bar first, then the summary
        if trainer.rank == 0:
            print(trainer.summary(), flush=True)
        ok = True
        return 0 if status in ok_statuses else 1
    finally:
        if trainer is not None:
            trainer.close(barrier=ok)
        elif _dist_initialized():
            sys.modules["torch.distributed"].destroy_process_group()


def recipe_main(argv: Sequence[str] | None, *, prog: str, description: str, epilog: str, recipes: Sequence[str],
                get_recipe: Callable[[str], Callable[[], Any]], make_trainer: Callable[[Any], Any],
                ok_statuses: Sequence[str] = ("done", "preempted")) -> int:
    """The body of a recipe-driven trainer entry point (midtrain, RL): `--recipe NAME` (default "demo"),
    `--list-recipes`, `--print-config`, flat `--section.field=value` overrides, rank-aware logging, then
    run_trainer(make_trainer(cfg))."""
    import argparse
    import json
    import logging

    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    p.add_argument("--recipe", default="demo", help="recipe name (--list-recipes shows them)")
    p.add_argument("--list-recipes", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.list_recipes:
        print("\n".join(recipes))
        return 0
    from prism_fast.train.config import apply_overrides, to_dict  # noqa: PLC0415 (keeps `--help` fast)
    cfg = apply_overrides(get_recipe(args.recipe)(), overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    rank = _rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_trainer(lambda: make_trainer(cfg), ok_statuses)


# ------------------------------------------------------------------------------------------ collective agreement
def _dist_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _dist_active(group) -> bool:
    return _dist_initialized() and sys.modules["torch.distributed"].get_world_size(group) > 1


def agree_on_error(local: BaseException | None, group=None) -> None:
    """Collective (every rank calls it): if any rank has an error, every rank raises a UserError carrying the
    message of the lowest failing rank; otherwise returns. Use after a phase where only some ranks may fail
    (a rank-0-only write, a local file), so the others never wait in the next collective for a dead peer."""
    if not _dist_active(group):
        if local is not None:
            raise local
        return
    import torch.distributed as dist  # noqa: PLC0415
    msg = None if local is None else (str(local).strip() or type(local).__name__)
    msgs: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(msgs, msg, group=group)
    first = next((m for m in msgs if m is not None), None)
    if first is not None:
        if isinstance(local, UserError) and msg == first:
            raise local
        raise UserError(first) from local


def rank0_result(fn: Callable[[], T], group=None) -> T:
    """Run fn on rank 0 only and hand its result (a picklable value) to every rank; if fn raises a user error,
    every rank raises it as a UserError (rank 0 prints it through run_entry). Collective."""
    if not _dist_active(group):
        return fn()
    import torch.distributed as dist  # noqa: PLC0415
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except USER_ERRORS as e:
            box[0] = ("error", str(e).strip() or type(e).__name__)
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value
