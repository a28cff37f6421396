"""Pure string parts: the format gate, code extraction, multiple-choice letters, the repetition measure."""
import pytest

from prism_fast.rewards.format import extract_program, split_answer
from prism_fast.rewards.items import reference_problem
from prism_fast.rewards.mc import extract_choice, verify_mc
from prism_fast.rewards.penalties import repetition_fraction


@pytest.mark.parametrize("response, answer", [
    ("<think>reasoning</think> The answer is 4.", " The answer is 4."),
    ("<think>a</think><think>b</think>\n42", "\n42"),                      # answer after the last </think>
    ("<think>no close tag, the answer is 4", None),
    ("reasoning</think> 4", None),                                          # no <think>
    ("<think>reasoning</think>   \n", None),                               # empty answer part
    ("</think> x <think> 4", None),                                         # close before open
    ("<think>a</think> 4 <think>more", None),                               # answer part re-opens thinking
])
def test_format_gate(response, answer):
    assert split_answer(response, require_think=True) == answer
    assert split_answer(response, require_think=False) == response


def test_extract_program_takes_the_last_closed_python_block():
    text = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n```\nplain\n```\n```python\nunclosed"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("```Python3 solution\nx = 1\n```") == "x = 1\n"
    assert extract_program("no code here") is None
    assert extract_program("```python\n   \n```") is None


@pytest.mark.parametrize("answer, letter", [
    ("Answer: C", "C"), ("The answer is (B).", "B"), ("\\boxed{D}", "D"), ("\\boxed{\\text{A}}", "A"),
    ("**Answer:** (C)", "C"), ("(A) and (B) are wrong, so the answer is (D)", "D"),
    ("Answer: C. Note that (A) was tempting.", "C"), ("(A) looks wrong; (C) fits", "C"), ("B", "B"),
    ("**D**", "D"), ("C.", "C"), ("I think it is probably right", None), ("Answer: I am not sure", None),
    ("The correct answer is \\boxed{(B)}", "B"), ("", None),
])
def test_mc_letter_extraction(answer, letter):
    assert extract_choice(answer) == letter


def test_verify_mc():
    assert verify_mc("Answer: c", "C")[1] == "no_answer"           # a lower-case word is not a choice
    assert verify_mc("Answer: C", " c ")[:2] == (1.0, "ok")
    assert verify_mc("Answer: B", "C")[:2] == (0.0, "wrong")
    assert verify_mc("x" * 200_000 + " (", "C")[1] == "no_answer"  # long junk: linear patterns, no stall


def test_repetition_fraction():
    assert repetition_fraction("", 3) == 0.0
    assert repetition_fraction("one two", 3) == 0.0
    assert repetition_fraction("a b c d e f g", 3) == 0.0
    loop = "the same sentence again " * 100
    assert repetition_fraction(loop, 3) > 0.98
    assert repetition_fraction("a b a b", 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        repetition_fraction("x", 0)


def test_reference_problems():
    assert reference_problem("math", "1/2") is None
    assert "empty" in reference_problem("math", "  ")
    assert "string" in reference_problem("math", None)
    assert reference_problem("mc", "C") is None and "one letter" in reference_problem("mc", "CD")
    assert reference_problem("code", {"tests": [{"input": "", "output": "1"}]}) is None
    assert reference_problem("code", {"test_code": "def check(f): pass", "entry_point": "f"}) is None
    assert "non-empty list" in reference_problem("code", {"tests": []})
    assert "test 1" in reference_problem("code", {"tests": [{"input": "", "output": ""}, {"input": 1}]})
    assert "identifier" in reference_problem("code", {"test_code": "x", "entry_point": "f()"})
    assert "must be" in reference_problem("code", {"foo": 1})
    assert "dict" in reference_problem("code", "print(1)")
