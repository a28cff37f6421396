"""Regenerate the bundled RL prompt sets prism_fast/rl/prompts/{math,code,mc}.jsonl (DESIGN 10 schema).

`python -m prism_fast.rl.make_prompts [--out DIR]`. Deterministic: one `random.Random(SEED)` per set. They are easy on
purpose: SmolLM2-135M-Instruct solves some of them some of the time, so the demo's reward can rise within minutes.
Distinct from the evaluation sets by construction: the eval helper's held-out sets (prism_fast/eval/data/) use their
own generator; ours use SEED below, operand ranges (math: a, b in 2..29, products of 2..12) and templates of our own,
and every prompt text carries our templates' wording ("Compute", "Answer with the letter").
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 15_2026
OUT = Path(__file__).resolve().parent / "prompts"
BOX = " Put the final answer in \\boxed{}."

_NAMES = ["Ava", "Ben", "Cleo", "Dev", "Emil", "Farah", "Gus", "Hana", "Ivo", "Juno"]
_THINGS = ["apples", "marbles", "stickers", "pencils", "shells", "cookies", "stamps", "coins"]


def math_items(rng: random.Random, n: int = 240) -> list[dict]:
    out = []
    for _ in range(n):
        kind = rng.choice(["add", "sub", "mul", "story_add", "story_sub"])
        a, b = rng.randint(2, 29), rng.randint(2, 29)
        if kind == "add":
            q, ans = f"Compute {a} + {b}.", a + b
        elif kind == "sub":
            a, b = max(a, b), min(a, b)
            q, ans = f"Compute {a} - {b}.", a - b
        elif kind == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            q, ans = f"Compute {a} * {b}.", a * b
        else:
            who, what = rng.choice(_NAMES), rng.choice(_THINGS)
            if kind == "story_add":
                q, ans = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?", a + b
            else:
                a, b = max(a, b), min(a, b)
                q, ans = f"{who} has {a} {what} and gives away {b}. How many {what} are left?", a - b
        out.append({"prompt": q + BOX, "domain": "math", "reference": str(ans)})
    return out


_CATEGORIES = {
    "a fruit": ["apple", "banana", "cherry", "mango", "pear", "grape"],
    "an animal": ["dog", "horse", "rabbit", "tiger", "sheep", "eagle"],
    "a color": ["red", "blue", "green", "yellow", "purple", "orange"],
    "a vehicle": ["car", "bus", "bicycle", "train", "truck", "boat"],
    "a piece of furniture": ["chair", "table", "sofa", "bed", "desk", "shelf"],
    "a musical instrument": ["piano", "violin", "guitar", "drum", "flute", "trumpet"],
}


def mc_items(rng: random.Random, n: int = 180) -> list[dict]:
    out, cats = [], list(_CATEGORIES)
    for _ in range(n):
        cat = rng.choice(cats)
        right = rng.choice(_CATEGORIES[cat])
        wrong = rng.sample([w for c in cats if c != cat for w in _CATEGORIES[c]], 3)
        opts = wrong + [right]
        rng.shuffle(opts)
        letter = "ABCD"[opts.index(right)]
        body = " ".join(f"{L}) {o}" for L, o in zip("ABCD", opts))
        out.append({"prompt": f"Which of these is {cat}? {body}. Answer with the letter in parentheses, like (X).",
                    "domain": "mc", "reference": letter})
    return out


_CODE = [
    ("reads two integers a and b on one line and prints their sum", lambda a, b: a + b),
    ("reads two integers a and b on one line and prints their product", lambda a, b: a * b),
    ("reads two integers a and b on one line and prints the larger one", max),
    ("reads two integers a and b on one line and prints a minus b", lambda a, b: a - b),
]


def code_items(rng: random.Random, n: int = 40) -> list[dict]:
    out = []
    for _ in range(n):
        text, fn = rng.choice(_CODE)
        tests = []
        for _ in range(3):
            a, b = rng.randint(-50, 99), rng.randint(-50, 99)
            tests.append({"input": f"{a} {b}\n", "output": f"{fn(a, b)}\n"})
        out.append({"prompt": f"Write a Python program that {text}. Give the program in a ```python block.",
                    "domain": "code", "reference": {"tests": tests}})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("math", math_items), ("mc", mc_items), ("code", code_items)):
        items = fn(random.Random(f"{SEED}-{name}"))
        (out / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
        print(f"{out / name}.jsonl: {len(items)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
