"""Shared wrapper of every command-line entry point: user mistakes print ONE line, not a traceback per rank.

`run_entry(main, argv)` runs `main(argv)` and turns a `UserError` (and the ValueError / FileNotFoundError that
config parsing, recipes and file checks raise for bad input) into `error: <message>` on stderr, printed by
rank 0 only (under torchrun every rank fails the same way), and exit status 2. `--debug` anywhere in argv keeps
the full traceback instead. Anything else (a real bug, a crash in a collective) propagates unchanged.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """A mistake the user can fix (config, data, checkpoint, input files): the message says what to change."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_entry(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call main(argv without --debug); map user errors to `error: ...` + exit code 2 (see module docstring)."""
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
