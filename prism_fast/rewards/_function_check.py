"""Check side of a function-style test: runs the reference's test code against a remote candidate.

Runs inside a sandbox of its own as check.py (plain_data.py's source, this file's, then a call to
`run_check(test_code, entry_point, nonce)`). No candidate code ever runs in this process: `candidate` is a
`Remote`, and each call sends the plain-data arguments to the candidate's sandbox (a pipe between the two)
and gets plain data back, rebuilt here from builtins, so the asserts compare real ints, lists and strings with
the builtin `==`. A value the candidate cannot send as plain data arrives as a Remote, which equals only itself
and has no truth value, so `assert candidate(x) == expected` and `assert candidate(x)` both fail on it.
Names the test code uses but does not define (helpers of the HumanEval prompt such as `poly` or `encode_cyclic`)
come from `setup_code`, the problem's own prompt code, run here first; only a name neither defines is looked up
in the candidate's program (a reference without setup_code: a known limit, see docs/rewards.md).

stdin/stdout are pipes to and from the candidate's sandbox (the worker does not relay each call); stderr goes
to the worker, and its last line is the verdict: "PRISM-VERDICT " + {"op": "done", "nonce"} after check()
returned, or {"op": "fail", "kind": "assert" | "error", "detail"}. The nonce is fresh per run and exists only in
this sandbox and the worker; the candidate cannot write to this stderr (a pipe of the worker's, in another
sandbox, under another uid).
"""
import builtins
import os
import sys


class CandidateGone(BaseException):
    """The candidate's sandbox stopped answering (exited, crashed, killed). A BaseException so that a test's own
    `except Exception` cannot turn a dead candidate into a pass."""


class RemoteError(Exception):
    """The candidate raised an exception that is not a builtin Exception type."""


_channel = {}
MAX_REPLY = 4 << 20
VERDICT_MARK = "PRISM-VERDICT "


def _request(message):
    _channel["out"].write(dumps_line(message))  # noqa: F821 - plain_data.py, concatenated before this file
    line = _channel["in"].readline(MAX_REPLY + 1)
    if not line:
        raise CandidateGone("the candidate's program stopped answering")
    if not line.endswith(b"\n"):
        raise CandidateGone("a reply over %d bytes" % MAX_REPLY)
    reply = loads_line(line)  # noqa: F821
    if "ok" in reply:
        return decode(reply["ok"], lambda n: Remote(n))  # noqa: F821
    name, message = reply["err"]
    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        raise cls(message)
    raise RemoteError("%s: %s" % (name, message))


def _send(value):
    if type(value) is Remote:
        return {"h": value._handle}
    raise NotPlain("a %s cannot be sent to the candidate" % type(value).__name__)  # noqa: F821


class Remote:
    """An object living in the candidate's sandbox: it can be called and its attributes read, nothing else."""
    __slots__ = ("_handle",)

    def __init__(self, handle):
        object.__setattr__(self, "_handle", handle)

    def __call__(self, *args, **kwargs):
        return _request({"op": "call", "fn": {"h": self._handle}, "args": encode(list(args), _send),  # noqa: F821
                         "kwargs": encode(kwargs, _send)})  # noqa: F821

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _request({"op": "getattr", "obj": {"h": self._handle}, "name": name})

    def __bool__(self):
        raise TypeError("the candidate returned an object that is not plain data; it has no truth value here")

    def __repr__(self):
        return "<candidate object %d>" % self._handle


def _candidate_global(name):
    return _request({"op": "global", "name": name})


class _Namespace(dict):
    """Globals of the test code: a name it does not define comes from builtins, else from the candidate."""

    def __missing__(self, name):
        if hasattr(builtins, name):
            return getattr(builtins, name)
        try:
            return _candidate_global(name)
        except NameError:
            raise KeyError(name) from None


def _trace():
    import traceback            # only on failure: importing it costs ~5-30 ms per test on a busy machine
    return traceback.format_exc(limit=-2)[-300:]


def run_check(test_code, entry_point, nonce, setup_code=""):
    _channel["in"] = os.fdopen(os.dup(0), "rb")
    _channel["out"] = os.fdopen(os.dup(1), "wb", buffering=0)
    verdict_out = os.fdopen(os.dup(2), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)                   # the test code's prints go to stderr, not into the protocol
    ns = _Namespace(__name__="__check__", __builtins__=builtins)
    try:
        if setup_code:
            exec(compile(setup_code, "setup_code.py", "exec"), ns)
            ns.pop(entry_point, None)   # the prompt's stub: tests that name the entry point mean the candidate's
        exec(compile(test_code, "test_code.py", "exec"), ns)
        ns["check"](_candidate_global(entry_point))
        verdict = {"op": "done", "nonce": nonce}
    except AssertionError:
        verdict = {"op": "fail", "kind": "assert", "detail": _trace()}
    except BaseException:  # noqa: BLE001 - CandidateGone, a candidate's exception, a broken test
        verdict = {"op": "fail", "kind": "error", "detail": _trace()}
    sys.stdout.flush()
    sys.stderr.flush()
    verdict_out.write(VERDICT_MARK.encode() + dumps_line(verdict))  # noqa: F821
