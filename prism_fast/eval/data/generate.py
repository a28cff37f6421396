"""Deterministic generator of the bundled evaluation stand-ins (original, programmatic, CC0-1.0).

STAND-INS, NOT THE PAPER'S BENCHMARKS: three small held-out sets, one per aggregate domain, sized so that a
135M model evaluates all of them in minutes on 2 CPU cores. They exist so the evaluator, the aggregates and the
base -> MT -> RL comparison can run end to end without the (non-redistributable) real benchmarks.
- math_standin.jsonl: MATH-500 schema (`problem`, `answer`, `unique_id`), short-answer arithmetic/number theory.
- code_standin.jsonl: LiveCodeBench release schema, stdin/stdout tests; `private_test_cases` in the release's
  compressed form (so the real decoding path runs); every test comes from a reference solution run here.
- science_standin.jsonl: GPQA schema (`Question`, `Correct Answer`, `Incorrect Answer 1..3`, `Record ID`).
The templates differ from those of the training corpora (prism_fast/data/corpora/generate.py) and the RNG seed is
its own; tests/eval/test_standins.py checks that no item occurs in the training corpora or the RL prompt sets.
`python -m prism_fast.eval.data.generate` rewrites the files; a test checks regeneration gives the shipped bytes.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from prism_fast.eval.loaders import encode_lcb_tests

HERE = Path(__file__).parent
SEED = "prism_fast.eval.standins.v1"   # distinct from every training / RL generator seed
N_MATH, N_CODE, N_SCIENCE = 20, 10, 20


# ---------------------------------------------------------------- math (answers are integers)
def _divisors(n: int) -> int:
    return sum(1 for d in range(1, n + 1) if n % d == 0)


def _math_items(r: random.Random) -> list[dict]:
    makers = [
        lambda: (lambda a, b: (f"What is the remainder when ${a}$ is divided by ${b}$?", a % b))(
            r.randint(100, 999), r.randint(3, 13)),
        lambda: (lambda g, x, y: (f"Find the greatest common divisor of ${g * x}$ and ${g * y}$.",
                                  math.gcd(g * x, g * y)))(r.randint(2, 15), r.randint(2, 9), r.randint(10, 19)),
        lambda: (lambda n: (f"How many positive divisors does ${n}$ have?", _divisors(n)))(r.randint(20, 120)),
        lambda: (lambda a, b: (f"Evaluate ${a}^2 - {b}^2$.", a * a - b * b))(r.randint(11, 40), r.randint(2, 10)),
        lambda: (lambda x, y: (f"Two integers have sum ${x + y}$ and difference ${x - y}$. What is the larger "
                               f"integer?", x))(r.randint(30, 80), r.randint(1, 29)),
        lambda: (lambda n: (f"What is the sum of the first ${n}$ positive odd integers?", n * n))(r.randint(5, 30)),
        lambda: (lambda a, d, k: (f"An arithmetic sequence starts ${a}, {a + d}, {a + 2 * d}, \\ldots$. What is its "
                                  f"${k}$th term?", a + (k - 1) * d))(r.randint(1, 20), r.randint(2, 9),
                                                                      r.randint(10, 25)),
    ]
    items, seen = [], set()
    while len(items) < N_MATH:
        q, a = makers[len(items) % len(makers)]()
        if q not in seen:
            seen.add(q)
            items.append({"problem": q, "answer": str(a), "unique_id": f"standin/math/{len(items):03d}",
                          "subject": "stand-in", "level": 1})
    return items


# ---------------------------------------------------------------- code (stdin -> stdout)
_CODE_TASKS = [
    ("Given two integers a and b on one line, print a * b - a.", lambda r: f"{r.randint(-99, 99)} {r.randint(-99, 99)}",
     lambda s: str((lambda a, b: a * b - a)(*map(int, s.split())))),
    ("Given an integer n (1 <= n <= 1000), print the sum of the squares 1^2 + 2^2 + ... + n^2.",
     lambda r: str(r.randint(1, 1000)), lambda s: str(sum(k * k for k in range(1, int(s) + 1)))),
    ("Given one word of lowercase letters, print it with its letters in reverse order.",
     lambda r: "".join(r.choice("abcdefghij") for _ in range(r.randint(1, 12))), lambda s: s.strip()[::-1]),
    ("The first line holds n; the second holds n integers. Print the difference between the largest and the "
     "smallest of them.", lambda r: (lambda v: f"{len(v)}\n{' '.join(map(str, v))}")(
         [r.randint(-500, 500) for _ in range(r.randint(1, 8))]),
     lambda s: (lambda v: str(max(v) - min(v)))(list(map(int, s.split("\n")[1].split())))),
    ("Given an integer n, print YES if n is divisible by 3 or by 7 and NO otherwise.",
     lambda r: str(r.randint(-300, 300)), lambda s: "YES" if int(s) % 3 == 0 or int(s) % 7 == 0 else "NO"),
    ("Given a line of text, print the number of vowels (a, e, i, o, u, lowercase only) in it.",
     lambda r: " ".join("".join(r.choice("abcdeiouxyz") for _ in range(r.randint(1, 6))) for _ in range(3)),
     lambda s: str(sum(c in "aeiou" for c in s))),
    ("Given an integer n (0 <= n <= 60), print the n-th Lucas number, where L(0) = 2 and L(1) = 1.",
     lambda r: str(r.randint(0, 60)), lambda s: str((lambda n: _lucas(n))(int(s)))),
    ("Given a positive integer n, print its digits in binary without leading zeros.",
     lambda r: str(r.randint(1, 10 ** 6)), lambda s: format(int(s), "b")),
    ("Given three integers on one line, print them in non-decreasing order separated by single spaces.",
     lambda r: " ".join(str(r.randint(-50, 50)) for _ in range(3)),
     lambda s: " ".join(map(str, sorted(map(int, s.split()))))),
    ("Given an integer n (1 <= n <= 20), print n lines; line k (1-based) holds k asterisks.",
     lambda r: str(r.randint(1, 20)), lambda s: "\n".join("*" * k for k in range(1, int(s) + 1))),
]


def _lucas(n: int) -> int:
    a, b = 2, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _code_items(r: random.Random) -> list[dict]:
    items = []
    for k, (text, make_input, solve) in enumerate(_CODE_TASKS[:N_CODE]):
        inputs = []
        while len(inputs) < 4:
            x = make_input(r)
            if x not in inputs:
                inputs.append(x)
        tests = [{"input": x + "\n", "output": solve(x) + "\n", "testtype": "stdin"} for x in inputs]
        items.append({
            "question_title": f"stand-in {k}", "question_content": text, "platform": "standin",
            "question_id": f"standin/code/{k:03d}", "contest_id": "standin", "contest_date": "2026-01-01T00:00:00",
            "starter_code": "", "difficulty": "easy", "public_test_cases": json.dumps(tests[:1]),
            "private_test_cases": encode_lcb_tests(tests[1:]), "metadata": "{}"})
    return items


# ---------------------------------------------------------------- science (4-way multiple choice)
_FACTS = [
    ("Which particle carries a negative elementary charge?", "the electron", ["the proton", "the neutron",
                                                                              "the photon"]),
    ("Which organelle makes most of the ATP in a eukaryotic cell?", "the mitochondrion",
     ["the Golgi apparatus", "the lysosome", "the nucleolus"]),
    ("Which gas makes up most of Earth's atmosphere by volume?", "nitrogen", ["oxygen", "argon", "carbon dioxide"]),
    ("What type of bond holds the two strands of a DNA double helix together?", "hydrogen bonds",
     ["ionic bonds", "peptide bonds", "metallic bonds"]),
    ("Which quantity is conserved in a perfectly elastic collision but not in a perfectly inelastic one?",
     "total kinetic energy", ["total momentum", "total mass", "total charge"]),
    ("What is the pH of a neutral aqueous solution at 25 degrees Celsius?", "7", ["0", "1", "14"]),
    ("Which enzyme unwinds the DNA double helix at the replication fork?", "helicase",
     ["ligase", "primase", "amylase"]),
    ("Which planet in the solar system has the shortest orbital period?", "Mercury", ["Venus", "Mars", "Neptune"]),
]


def _science_items(r: random.Random) -> list[dict]:
    items = []
    for q, right, wrong in _FACTS:
        items.append((q, right, wrong))
    while len(items) < N_SCIENCE:
        kind = len(items) % 3
        if kind == 0:
            m, a = r.randint(2, 20), r.randint(2, 12)
            q = f"A net force accelerates a {m} kg block at {a} m/s^2. What is the magnitude of the force?"
            right = m * a
            wrong = [m + a, m * a * 2, abs(m * a - m)]
            unit = " N"
        elif kind == 1:
            v, rr = r.randint(2, 24), r.choice([2, 3, 4, 6, 8])
            q, right = f"A {v * rr} V source drives a current through a {rr} ohm resistor. What is the current?", v
            wrong = [v * rr * rr, v + rr, v * 2]
            unit = " A"
        else:
            h = r.randint(2, 7)
            q, right = f"A radioactive sample passes {h} half-lives. What fraction of the original nuclei remains?", \
                f"1/{2 ** h}"
            wrong = [f"1/{2 ** (h + 1)}", f"1/{2 ** (h + 2)}", f"1/{2 * h + 1}"]
            unit = ""
        wrong = [f"{w}{unit}" for w in wrong]
        if len(set(wrong) | {f"{right}{unit}"}) == 4 and q not in {it[0] for it in items}:
            items.append((q, f"{right}{unit}", wrong))
    return [{"Question": q, "Correct Answer": right, "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1],
             "Incorrect Answer 3": wrong[2], "Record ID": f"standin/science/{k:03d}", "Subdomain": "stand-in"}
            for k, (q, right, wrong) in enumerate(items)]


def build() -> dict[str, list[dict]]:
    r = random.Random(SEED)
    return {"math_standin.jsonl": _math_items(r), "code_standin.jsonl": _code_items(r),
            "science_standin.jsonl": _science_items(r)}


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    for name, rows in build().items():
        (HERE / name).write_text(render(rows), encoding="utf-8")
        print(f"wrote {HERE / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
