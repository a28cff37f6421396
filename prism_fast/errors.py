"""User errors and their one-line descriptions (a leaf module: imports nothing of prism_fast).

`UserError` is a mistake the user can fix; the command-line wrapper (`prism_fast.entry.run_entry`) prints it as
one `error:` line and exits 2. When such an error wraps another exception (a tokenizer that transformers could not
load, a config value that did not parse), the line keeps the cause's type and message through `describe`, and the
UserError is raised `from` the cause so that `--debug` shows the whole chain.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix (config, data, checkpoint, input files): the message says what to change."""


def describe(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` of an exception, plus the failing module's file for an ImportError whose
    message does not name it (e.g. "ImportError: cannot import name 'X' from 'kernels' (/path/kernels/__init__.py)").
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__
    path = getattr(e, "path", None) if isinstance(e, ImportError) else None
    if path and str(path) not in text:
        text += f" (module file {path})"
    return text
