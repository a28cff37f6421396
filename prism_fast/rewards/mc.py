"""Multiple choice (GPQA style): find the final choice letter of the answer part and compare it with the key.

Forms are tried by strength: `\\boxed{C}` (also `\\boxed{\\text{C}}`, `\\boxed{(C)}`), then an "answer" phrase
("Answer: C", "the answer is (C)", "**Answer:** C"), then a parenthesized "(C)", then an answer part that is only
a letter ("C", "C.", "**C**"). Within the strongest form present the last occurrence wins, so "(A) and (B) are
wrong, the answer is (C)" gives C and "Answer: C; (A) was tempting" still gives C. Letters A-J (GPQA uses
A-D, MMLU-Pro up to J; "I" not where it reads as the pronoun). Every pattern is linear (no nested quantifiers),
so a hostile answer cannot stall it.
"""
from __future__ import annotations

import re

# "I" is also the pronoun ("Answer: I am not sure", "I'm"): not a choice when a verb or an apostrophe follows.
_L = r"([A-HJ]|I(?!'|\s+(?:am|think|believe|guess|would|will|was|have|can|cannot|do|don't|need)\b))"
_FORMS = (
    re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{\s*)?\(?" + _L + r"\)?\s*\}?\s*\}"),
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*[:\-]?\s*\**\s*[:\-]?\s*\(?" + _L + r"\)?(?![A-Za-z0-9])"),
    re.compile(r"\(" + _L + r"\)"),
)
_BARE = re.compile(r"\s*\**\s*\(?" + _L + r"[).]?\s*\**\s*")


def extract_choice(answer: str) -> str | None:
    """The final choice letter of `answer` (upper case), or None when it states no choice."""
    for form in _FORMS:
        found = form.findall(answer)
        if found:
            return found[-1]
    m = _BARE.fullmatch(answer)
    return m.group(1) if m else None


def verify_mc(answer: str, reference: str) -> tuple[float, str, str]:
    """(correct, reason, detail) for one answer part against the key letter."""
    choice = extract_choice(answer)
    if choice is None:
        return 0.0, "no_answer", "no choice letter found"
    ok = choice == str(reference).strip().upper()
    return (1.0, "ok", "") if ok else (0.0, "wrong", f"chose {choice}")
