"""Math answers: math-verify equivalences through verify_math, and answers that make sympy blow up ending as
"timeout" through the pool without stalling the rest of the batch."""
import time

import pytest

from prism_fast.rewards.math_verifier import verify_math

EQUIVALENT = [
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}"),                      # fraction vs decimal
    ("0.5", "so it is $\\frac12$"),                                      # decimal vs fraction, last expression
    ("[1,2)", "\\boxed{[1, 2)}"),                                        # interval
    ("\\{1,2,3\\}", "\\boxed{\\{3, 2, 1\\}}"),                            # set, any order
    ("1,2", "\\boxed{2, 1}"),                                            # a bare list is read as a set
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}}"),
    ("50\\%", "\\boxed{0.5}"),                                           # percentage
    ("50\\%", "\\boxed{50\\%}"),
    ("10", "\\boxed{10 \\text{ cm}}"),                                   # units stripped
    ("5", "\\boxed{\\$5}"),
    ("\\text{(B)}", "\\boxed{B}"),                                       # \text{}
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),                                    # symbolic equality
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ("3", "first 2, then \\boxed{3}, and 4 at the end"),                 # \boxed wins over the last number
]
NOT_EQUIVALENT = [
    ("(1,2]", "\\boxed{[1,2)}"),
    ("\\{1,2\\}", "\\boxed{\\{1,2,3\\}}"),
    ("\\frac{1}{3}", "\\boxed{0.33}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}}"),
]


@pytest.mark.parametrize("gold, answer", EQUIVALENT)
def test_equivalent_answers(gold, answer):
    assert verify_math(answer, gold)[:2] == (1.0, "ok")


@pytest.mark.parametrize("gold, answer", NOT_EQUIVALENT)
def test_different_answers(gold, answer):
    assert verify_math(answer, gold)[:2] == (0.0, "wrong")


def test_no_answer_and_bad_gold():
    assert verify_math("I could not solve it.", "5")[1] == "no_answer"
    assert verify_math("\\boxed{5}", "\\boxed{")[1] in ("bad_reference", "wrong")


def test_blowups_end_as_timeout_and_the_batch_stays_on_time(rewarder):
    """10^(10^(10^10)) and a 31-deep parenthesis nest (~8 s of sympy each when unbounded) end as "timeout"
    at the 2 s limit while 20 ordinary items finish on the other worker."""
    hostile = ["\\boxed{10^{10^{10^{10}}}}", "\\boxed{" + "(" * 31 + "1" + ")" * 31 + "}", "\\boxed{10^{10^{8}}}"]
    items = [{"domain": "math", "response": r, "reference": "5"} for r in hostile]
    items += [{"domain": "math", "response": f"\\boxed{{{i}/4}}", "reference": f"{i / 4}"} for i in range(20)]
    t0 = time.monotonic()
    res = rewarder.score(items)
    elapsed = time.monotonic() - t0
    assert [r.reason for r in res[:3]] == ["timeout"] * 3
    assert all(r.reason == "ok" and r.reward == 1.0 for r in res[3:]), res[3:]
    # 3 x 2 s of timeouts over 2 workers plus ~1 s of ordinary work (slack for a loaded machine); unbounded,
    # the nest alone takes ~8 s and the power tower does not finish
    assert elapsed < 12, elapsed
    assert max(r.seconds for r in res[:3]) < 2.0 * 1.1 + 1.0 + 1.0     # hard limit + dispatcher slack
