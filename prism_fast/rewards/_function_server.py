"""Candidate side of a function-style test: runs the candidate's main.py, then answers calls with plain data.

Runs inside the candidate's sandbox as serve.py (plain_data.py's source, this file's, then a call to
`serve("main.py")`). It never sees the test code or an expected value: only the arguments of each call. The
protocol is one JSON line per message on the sandbox's stdin/stdout; before the program runs, those are moved
to private descriptors and fd 0 / fd 1 become /dev/null / stderr, so the program's own input() and print() do not
touch the protocol. Nothing the program does here can make a test pass: it can only send values, and the values
are compared in the other sandbox (_function_check.py). A program that exits, calls os._exit, or hangs during
its top level or a call simply stops answering.

Requests: {"op": "global", "name"}, {"op": "getattr", "obj": {"h": n}, "name"}, {"op": "call", "fn": {"h": n},
"args", "kwargs"}; replies {"ok": value} (plain data, or {"h": n} for any other object: a function, an
instance, a value with its own __eq__) or {"err": [exception type name, message]}.
"""
import builtins
import os
import sys


def serve(program_path):
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    handles = []

    def to_handle(obj):
        handles.append(obj)
        return {"h": len(handles) - 1}

    def from_handle(n):
        if not 0 <= n < len(handles):
            raise NotPlain("unknown handle %d" % n)  # noqa: F821 - plain_data.py, concatenated before this file
        return handles[n]

    ns = {"__name__": "__main__", "__file__": os.path.abspath(program_path), "__builtins__": builtins}
    startup_error = None
    try:
        with open(program_path, "rb") as f:
            code = compile(f.read(), os.path.abspath(program_path), "exec")
        exec(code, ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: a program that exits answers nothing
        startup_error = [type(e).__name__, "the program's top level raised: %s" % (str(e)[:300],)]
    sys.stdout.flush()
    for line in proto_in:
        try:
            if startup_error is not None:
                reply = {"err": startup_error}
            else:
                req = loads_line(line)  # noqa: F821
                if req["op"] == "global":
                    if req["name"] not in ns:
                        raise NameError("name %r is not defined by the program" % req["name"])
                    result = ns[req["name"]]
                elif req["op"] == "getattr":
                    result = getattr(from_handle(req["obj"]["h"]), req["name"])
                else:
                    args = decode(req["args"], from_handle)  # noqa: F821
                    kwargs = decode(req["kwargs"], from_handle)  # noqa: F821
                    result = from_handle(req["fn"]["h"])(*args, **kwargs)
                reply = {"ok": encode(result, to_handle)}  # noqa: F821
        except BaseException as e:  # noqa: BLE001 - a raise in the candidate is an answer, not our crash
            reply = {"err": [type(e).__name__, str(e)[:300]]}
        sys.stdout.flush()
        proto_out.write(dumps_line(reply))  # noqa: F821
