"""The format gate (paper: reward 0 unless `<think> ... </think> answer`) and the extraction of the program.

Verifiers only ever see the answer part, so a correct-looking expression inside the reasoning earns nothing.
"""
from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# The last fenced Python block; the info string may be python / py / python3 (any case) plus trailing words.
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n(.*?)```", re.IGNORECASE | re.DOTALL)


def split_answer(response: str, *, require_think: bool) -> str | None:
    """The answer part of `response`, or None when the format gate fails.

    With require_think the response must hold `<think>`, later a `</think>`, and after the last `</think>` a
    non-empty answer part (no further `<think>` in it). Without it the whole response is the answer part.
    A chat template that already opened `<think>` in the prompt should prepend it to the response."""
    if not require_think:
        return response
    start = response.find(THINK_OPEN)
    end = response.rfind(THINK_CLOSE)
    if start < 0 or end < start + len(THINK_OPEN):
        return None
    answer = response[end + len(THINK_CLOSE):]
    if not answer.strip() or THINK_OPEN in answer:
        return None
    return answer


def extract_program(answer: str) -> str | None:
    """The body of the last closed ```python block of the answer part (None when there is none or it is blank)."""
    blocks = _CODE_BLOCK.findall(answer)
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]
