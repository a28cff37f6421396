"""Config tree for `prism_fast.midtrain`: nested dataclasses (one per component, each with `build()`), a recipe is a
Python function returning the root `JobConfig`, and the CLI only adds `--recipe NAME` plus flat
`--section.field=value` overrides (torchtitan's config style; no YAML layering).

Overrides are parsed with the field's annotated type: int, float, str, bool (true/false/1/0/yes/no), None ("none"
/ "null" for Optional fields), tuples/lists/dicts as JSON (`--optim.betas=[0.9,0.95]`). Unknown sections or
fields raise ValueError listing the valid names. After overrides the tree is re-validated (`__post_init__` runs
again through dataclasses.replace), then frozen by convention: the trainer never mutates it.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def _is_dc(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _parse_value(text: str, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _parse_value(text, a, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: cannot parse {text!r} as {tp}: {errors}")
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean (true/false), got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    if origin in (tuple, list, dict) or tp in (tuple, list, dict):
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: expected JSON for {tp}, e.g. [0.9, 0.95] or {{\"k\": 1}}; got {text!r}") \
                from None
        return tuple(val) if (origin or tp) is tuple else val
    raise ValueError(f"{where}: fields of type {tp} cannot be set from the command line")


def _type_hints(obj) -> dict:
    return typing.get_type_hints(type(obj))


def apply_overrides(cfg, overrides: list[str]):
    """Return a new config tree with `--section.field=value` (or `--section.field value`) overrides applied."""
    pairs: list[tuple[str, str]] = []
    it = iter(overrides)
    for tok in it:
        if not tok.startswith("--"):
            raise ValueError(f"unexpected argument {tok!r}; overrides look like --section.field=value")
        key, eq, val = tok[2:].partition("=")
        if not eq:
            try:
                val = next(it)
            except StopIteration:
                raise ValueError(f"override --{key} has no value; write --{key}=VALUE") from None
        pairs.append((key, val))
    for key, val in pairs:
        cfg = _set_path(cfg, key.replace("-", "_").split("."), val, key)
    return cfg


def _set_path(node, parts: list[str], text: str, full: str):
    names = [f.name for f in dataclasses.fields(node)]
    head = parts[0]
    if head not in names:
        kind = "section" if len(parts) > 1 else "field"
        raise ValueError(f"--{full}: unknown {kind} {head!r}; valid: {', '.join(names)}")
    cur = getattr(node, head)
    if len(parts) > 1:
        if not _is_dc(cur):
            raise ValueError(f"--{full}: {head!r} is a field, not a section")
        new = _set_path(cur, parts[1:], text, full)
    else:
        if _is_dc(cur):
            sub = [f.name for f in dataclasses.fields(cur)]
            raise ValueError(f"--{full}: {head!r} is a section; set one of its fields: {', '.join(sub)}")
        new = _parse_value(text, _type_hints(node)[head], f"--{full}")
    return dataclasses.replace(node, **{head: new})  # re-runs __post_init__: validation after override


def to_dict(cfg) -> dict[str, Any]:
    def conv(x):
        if _is_dc(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, Path):
            return str(x)
        return x
    return conv(cfg)


def save_json(cfg, path: Path):
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
