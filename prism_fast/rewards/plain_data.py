"""Type-tagged JSON for plain Python data: the only way values cross between a candidate and its checks.

A function-style test (HumanEval) runs the candidate and the test's `check` in two separate sandboxes; every
argument and every return value travels as one line of this encoding. `encode` accepts only objects whose type
IS one of the plain builtins (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset;
subclasses are refused), so a candidate cannot smuggle an object with its own `__eq__`, `__hash__` or `__bool__`
into the process that runs the asserts: what arrives there is rebuilt from builtins by `decode`. Floats travel as
float.hex() (exact, nan and inf included); bool and int keep their own tags.

Anything else is the caller's business (`on_other`): the candidate side answers with a handle to a remote object
(an instance of the candidate's `Solution` class, say), which the check side can call but never compare by value.

Stdlib only and free of package imports: the sandbox scripts are built by concatenating this file's source with
a harness (sandbox_scripts.py), since the sandbox cannot import prism_fast.
"""
import json

MAX_DEPTH = 64


class NotPlain(TypeError):
    """A value that is not plain data (or nests deeper than MAX_DEPTH)."""


def encode(value, on_other=None, _depth=0):
    """`value` -> a JSON-able tree; objects of other types go to `on_other(obj)` (a tree) or raise NotPlain."""
    if _depth > MAX_DEPTH:
        raise NotPlain("nested deeper than %d" % MAX_DEPTH)
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return {"i": str(value)}            # a tag of its own: JSON would turn True and 1 into one value
    if t is float:
        return {"f": value.hex()}
    if t is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if t is bytes:
        return {"b": value.hex()}
    tags = {list: "l", tuple: "t", set: "s", frozenset: "z"}
    if t in tags:
        return {tags[t]: [encode(v, on_other, _depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, on_other, _depth + 1), encode(v, on_other, _depth + 1)] for k, v in value.items()]}
    if on_other is not None:
        return on_other(value)
    raise NotPlain("%s is not plain data" % t.__name__)


def decode(tree, on_handle=None, _depth=0):
    """Inverse of `encode`; {"h": n} trees go to `on_handle(n)`. Anything malformed raises NotPlain."""
    if _depth > MAX_DEPTH:
        raise NotPlain("nested deeper than %d" % MAX_DEPTH)
    if tree is None or type(tree) in (bool, str):
        return tree
    if type(tree) is not dict or len(tree) != 1:
        raise NotPlain("malformed value %r" % (str(tree)[:60],))
    (tag, body), = tree.items()
    sub = lambda v: decode(v, on_handle, _depth + 1)  # noqa: E731
    if tag == "i" and type(body) is str:
        return int(body)
    if tag == "f" and type(body) is str:
        return float.fromhex(body)
    if tag == "c" and type(body) is list and len(body) == 2:
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag in ("l", "t", "s", "z") and type(body) is list:
        items = [sub(v) for v in body]
        return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
    if tag == "d" and type(body) is list:
        return {sub(k): sub(v) for k, v in body}
    if tag == "h" and type(body) is int and on_handle is not None:
        return on_handle(body)
    raise NotPlain("malformed value %r" % (str(tree)[:60],))


def dumps_line(message):
    """One protocol line (ASCII: lone surrogates in strings travel as JSON escapes)."""
    return (json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode()


def loads_line(line):
    def no_constants(name):
        raise NotPlain("bare %s in a protocol line" % name)
    return json.loads(line, parse_constant=no_constants)
