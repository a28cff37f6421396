"""plain_data.py, the only format values cross between a candidate's sandbox and its checks: exact builtin
types round-trip, everything else is refused or becomes a handle, and decoding never builds a foreign object."""
import math

import pytest

from prism_fast.rewards.plain_data import NotPlain, decode, dumps_line, encode, loads_line


@pytest.mark.parametrize("value", [None, True, False, 0, -7, 10**40, 1.5, -0.0, float("inf"), "x\ud800y", b"\x00\xff",
                                   1 + 2j, [1, [2, (3, "a")]], (), {1: "a", "b": [2.0]}, {1, 2}, frozenset({"z"})])
def test_exact_types_round_trip(value):
    back = decode(loads_line(dumps_line(encode(value))))
    assert type(back) is type(value) and back == value


def test_bool_and_int_stay_apart_and_nan_survives():
    assert type(decode(encode(True))) is bool and type(decode(encode(1))) is int
    assert math.isnan(decode(loads_line(dumps_line(encode(float("nan"))))))


def test_subclasses_and_objects_are_not_plain():
    class Sneaky(int):
        def __eq__(self, other):
            return True
    for value in (Sneaky(1), [Sneaky(1)], object(), (x for x in ())):
        with pytest.raises(NotPlain):
            encode(value)
    handles = []
    assert encode([1, object()], on_other=lambda o: handles.append(o) or {"h": 0}) == {"l": [{"i": "1"}, {"h": 0}]}


@pytest.mark.parametrize("tree", [{"h": 0}, {"x": 1}, {"i": 1}, [1], 1.5, {"l": "abc"}, {"d": [[1]]}])
def test_malformed_trees_are_refused(tree):
    with pytest.raises((NotPlain, ValueError, TypeError)):
        decode(tree)


def test_bare_json_constants_are_refused():
    with pytest.raises(NotPlain):
        loads_line(b'{"ok": NaN}')
