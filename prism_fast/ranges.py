"""Declarative value ranges of config fields: `lr: float = ranged(5e-5, gt=0)` instead of an `if` per field.

A field declared with `ranged(default, ge=/gt=/le=/lt=)` carries its allowed interval in the dataclass field's
metadata; `check_ranges(cfg, "optim")` walks a config (and its nested dataclass sections, named by field) and
raises one UserError naming the first field out of range and the interval it must lie in. Every ranged float
must also be finite: NaN passes every `<` and `>` test (so `if lr <= 0` lets `lr=nan` through), and an infinite
lr, timeout or penalty is never what the user meant. None is accepted for Optional fields (it means "off").
A tuple / list field is checked element by element (`optim.betas`).

Config roots call `check_ranges(self)` in `__post_init__`, which dataclasses.replace re-runs after CLI
overrides, so a bad value fails when the config is built: before `--print-config` prints, a process group
exists or anything is written.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from prism_fast.errors import UserError

_KEY = "prism_range"


@dataclass(frozen=True, slots=True)
class Range:
    """An interval: each bound optional, open (gt / lt) or closed (ge / le)."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def text(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if self.le is not None else '<'} {hi[:-1]}"
        return ""  # no bounds: finiteness only


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def ranged(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field whose value (or each element of a tuple / list value) must lie in the given range."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_KEY: Range(ge=ge, gt=gt, le=le, lt=lt)})


def field_range(f: dataclasses.Field) -> Range | None:
    return f.metadata.get(_KEY)


def check_ranges(cfg: Any, prefix: str = "", *, flags: bool | Callable[[str], str] = True) -> None:
    """Raise UserError for the first ranged field of `cfg` (recursing into dataclass-valued fields, whose names
    extend the prefix: "optim.lr") whose value is outside its range. flags: True = the message names the
    `--section.field` override to change (config trees); a function = field path -> the CLI flag that sets it
    (flat argparse CLIs); False for objects built in code (SamplingParams)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, where, flags=flags)
            continue
        rng = field_range(f)
        if rng is None or value is None:
            continue
        for v in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{where}={value!r} must be a number {rng.text()}")
            if not rng.contains(v):
                flag = flags(where) if callable(flags) else f"--{where}" if flags else None
                fix = f"; set {flag} to such a value" if flag else ""
                kind = "an integer" if str(f.type).startswith("int") else "a finite number"
                raise UserError(f"{where}={_show(value)} is out of range: it must be {kind} {rng.text()}".rstrip()
                                + fix)


def _show(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


__all__ = ["Range", "check_ranges", "field_range", "ranged"]
