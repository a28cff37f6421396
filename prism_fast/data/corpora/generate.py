"""Deterministic generators of the bundled math, code and science corpora (original, programmatic, CC0-1.0).

Every record is a question with a worked solution whose last line is `Final answer: X`, and `final` holds X so
the answer is checkable (math: exact integers or reduced fractions; science: values rounded as stated; code:
the function is executed on the stated test cases when the record is generated, so every shipped solution
passes its own tests). `python -m prism_fast.data.corpora.generate` rewrites the .jsonl files beside this module;
a test checks that regenerating gives the shipped bytes.
"""
from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).parent
NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomoko", "Uma", "Viktor", "Wen", "Yusuf"]
ITEMS = ["apples", "pencils", "marbles", "books", "stickers", "coins", "cards", "shells", "tickets", "stamps"]


def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _math_word(r: random.Random) -> dict:
    a, b, c = r.randint(12, 90), r.randint(2, 9), r.randint(3, 40)
    who, item = r.choice(NAMES), r.choice(ITEMS)
    total = a * b - c
    q = (f"{who} buys {b} boxes of {item} with {a} {item} in each box, then gives away {c} of them. "
         f"How many {item} does {who} have left?")
    s = (f"Each box holds {a} {item}, so {b} boxes hold {b} x {a} = {a * b} {item}.\n"
         f"Giving away {c} leaves {a * b} - {c} = {total}.\nFinal answer: {total}")
    return {"question": q, "answer": s, "final": str(total)}


def _math_linear(r: random.Random) -> dict:
    x, a = r.randint(-20, 20), r.choice([k for k in range(-9, 10) if k not in (0, 1)])
    b = r.randint(-50, 50)
    c = a * x + b
    q = f"Solve for x: {a}x + ({b}) = {c}."
    s = (f"Subtract {b} from both sides: {a}x = {c} - ({b}) = {c - b}.\n"
         f"Divide both sides by {a}: x = {c - b} / {a} = {x}.\n"
         f"Check: {a} * {x} + ({b}) = {a * x + b}, which matches.\nFinal answer: {x}")
    return {"question": q, "answer": s, "final": str(x)}


def _math_fraction(r: random.Random) -> dict:
    p, q_ = Fraction(r.randint(1, 9), r.randint(2, 12)), Fraction(r.randint(1, 9), r.randint(2, 12))
    op = r.choice(["+", "-", "*"])
    res = p + q_ if op == "+" else p - q_ if op == "-" else p * q_
    q = f"Compute {_frac(p)} {op} {_frac(q_)} and write the result as a reduced fraction."
    if op == "*":
        s = f"Multiply numerators and denominators: ({p.numerator} * {q_.numerator}) / ({p.denominator} * {q_.denominator})"
        s += f" = {p.numerator * q_.numerator}/{p.denominator * q_.denominator}."
    else:
        den = p.denominator * q_.denominator // math.gcd(p.denominator, q_.denominator)
        s = (f"The least common denominator of {p.denominator} and {q_.denominator} is {den}.\n"
             f"{_frac(p)} = {p.numerator * den // p.denominator}/{den} and "
             f"{_frac(q_)} = {q_.numerator * den // q_.denominator}/{den}.\n"
             f"So the result is ({p.numerator * den // p.denominator} {op} {q_.numerator * den // q_.denominator})"
             f"/{den}.")
    s += f"\nReducing gives {_frac(res)}.\nFinal answer: {_frac(res)}"
    return {"question": q, "answer": s, "final": _frac(res)}


def _math_quadratic(r: random.Random) -> dict:
    u, v = r.randint(-12, 12), r.randint(-12, 12)
    b, c = -(u + v), u * v
    q = f"Find all real roots of x^2 + ({b})x + ({c}) = 0. Give the sum of the squares of the roots."
    lo, hi = sorted((u, v))
    roots = f"x = {lo} and x = {hi}" if lo != hi else f"the double root x = {lo}"
    ans = lo * lo + hi * hi if lo != hi else lo * lo
    s = (f"We look for two numbers with product {c} and sum {-b}: they are {lo} and {hi}.\n"
         f"So x^2 + ({b})x + ({c}) = (x - ({lo}))(x - ({hi})), giving {roots}.\n"
         f"The sum of the squares of the distinct roots is {ans}.\nFinal answer: {ans}")
    return {"question": q, "answer": s, "final": str(ans)}


def _math_series(r: random.Random) -> dict:
    a, d, n = r.randint(1, 30), r.randint(1, 12), r.randint(5, 60)
    last = a + (n - 1) * d
    total = n * (a + last) // 2
    q = f"What is the sum of the arithmetic sequence {a}, {a + d}, {a + 2 * d}, ..., {last}?"
    s = (f"The common difference is {d}, so the number of terms is ({last} - {a}) / {d} + 1 = {n}.\n"
         f"The sum is n * (first + last) / 2 = {n} * ({a} + {last}) / 2 = {total}.\nFinal answer: {total}")
    return {"question": q, "answer": s, "final": str(total)}


def _math_gcd(r: random.Random) -> dict:
    g = r.randint(2, 30)
    a, b = g * r.randint(2, 40), g * r.randint(2, 40)
    steps, x, y = [], max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} * {y} + {x % y}")
        x, y = y, x % y
    lcm = a * b // x
    q = f"Find gcd({a}, {b}) and lcm({a}, {b}). Report gcd + lcm."
    s = ("Euclid's algorithm:\n" + "\n".join(steps) + f"\nSo gcd = {x}. Then lcm = {a} * {b} / {x} = {lcm}.\n"
         f"gcd + lcm = {x + lcm}.\nFinal answer: {x + lcm}")
    return {"question": q, "answer": s, "final": str(x + lcm)}


def _math_percent(r: random.Random) -> dict:
    price, up, down = r.randint(20, 400), r.choice([10, 20, 25, 50]), r.choice([10, 20, 25, 40, 50])
    after = Fraction(price) * (100 + up) / 100 * (100 - down) / 100
    q = (f"A jacket costs ${price}. Its price rises by {up}% and then the new price is discounted by {down}%. "
         "What is the final price in dollars?")
    mid = Fraction(price) * (100 + up) / 100
    s = (f"After the {up}% rise the price is {price} * {100 + up}/100 = {_frac(mid)}.\n"
         f"After the {down}% discount it is {_frac(mid)} * {100 - down}/100 = {_frac(after)}.\n"
         f"Final answer: {_frac(after)}")
    return {"question": q, "answer": s, "final": _frac(after)}


def _math_dice(r: random.Random) -> dict:
    target = r.randint(3, 11)
    ways = [(i, j) for i in range(1, 7) for j in range(1, 7) if i + j == target]
    p = Fraction(len(ways), 36)
    q = f"Two fair six-sided dice are rolled. What is the probability that the sum is {target}?"
    listing = ", ".join(f"({i},{j})" for i, j in ways)
    s = (f"There are 36 equally likely ordered outcomes. The outcomes with sum {target} are {listing}: "
         f"{len(ways)} of them.\nThe probability is {len(ways)}/36 = {_frac(p)}.\nFinal answer: {_frac(p)}")
    return {"question": q, "answer": s, "final": _frac(p)}


MATH = [_math_word, _math_linear, _math_fraction, _math_quadratic, _math_series, _math_gcd, _math_percent,
        _math_dice]

# --------------------------------------------------------------------------------------------------------- code
_CODE_TASKS = [
    ("count_vowels", "s", "Return the number of vowels (a, e, i, o, u, either case) in the string s.",
     "    return sum(1 for ch in s.lower() if ch in 'aeiou')", lambda r: repr("".join(r.choice("abcdeIOUxyz ") for _ in range(r.randint(3, 14))))),
    ("running_max", "xs", "Return a list whose i-th element is the maximum of xs[0..i].",
     "    out, best = [], None\n    for x in xs:\n        best = x if best is None or x > best else best\n"
     "        out.append(best)\n    return out", lambda r: repr([r.randint(-9, 9) for _ in range(r.randint(1, 8))])),
    ("is_palindrome", "s", "Return True if s reads the same forwards and backwards, ignoring case and spaces.",
     "    t = ''.join(s.lower().split())\n    return t == t[::-1]",
     lambda r: repr(r.choice(["Never odd or even", "abca", "racecar", "step on no pets", "python", "A b A"]))),
    ("digit_sum", "n", "Return the sum of the decimal digits of the non-negative integer n.",
     "    total = 0\n    while n:\n        n, d = divmod(n, 10)\n        total += d\n    return total",
     lambda r: repr(r.randint(0, 10 ** r.randint(1, 9)))),
    ("merge_sorted", "a, b", "Merge two sorted lists a and b into one sorted list in linear time.",
     "    i = j = 0\n    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
     "            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n"
     "    return out + a[i:] + b[j:]",
     lambda r: f"{sorted(r.randint(0, 20) for _ in range(r.randint(0, 5)))}, "
               f"{sorted(r.randint(0, 20) for _ in range(r.randint(0, 5)))}"),
    ("fib", "n", "Return the n-th Fibonacci number with fib(0) = 0 and fib(1) = 1, iteratively.",
     "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a", lambda r: repr(r.randint(0, 40))),
    ("rle", "s", "Run-length encode s: 'aaab' becomes 'a3b1'.",
     "    out = []\n    i = 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n"
     "            j += 1\n        out.append(f'{s[i]}{j - i}')\n        i = j\n    return ''.join(out)",
     lambda r: repr("".join(r.choice("aab") * r.randint(1, 3) for _ in range(r.randint(1, 5))))),
    ("second_largest", "xs", "Return the second largest distinct value of xs, or None if there is none.",
     "    vals = sorted(set(xs))\n    return vals[-2] if len(vals) >= 2 else None",
     lambda r: repr([r.randint(0, 6) for _ in range(r.randint(1, 7))])),
    ("binary_search", "xs, target", "Return the index of target in the sorted list xs, or -1 if absent.",
     "    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n"
     "            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n"
     "    return -1", lambda r: f"{sorted(set(r.randint(0, 30) for _ in range(8)))}, {r.randint(0, 30)}"),
    ("word_freq", "text", "Return a dict mapping each lower-cased word of text to its count.",
     "    counts = {}\n    for w in text.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
     lambda r: repr(" ".join(r.choice(["the", "cat", "The", "sat", "mat", "on"]) for _ in range(r.randint(1, 7))))),
]


def _code(r: random.Random) -> dict:
    name, params, doc, body, gen_args = r.choice(_CODE_TASKS)
    src = f"def {name}({params}):\n    \"\"\"{doc}\"\"\"\n{body}\n"
    ns: dict = {}
    exec(src, ns)  # the solution is checked on its own examples before it ships
    calls = [gen_args(r) for _ in range(3)]
    results = [repr(eval(f"{name}({c})", ns)) for c in calls]
    q = (f"Write a Python function `{name}({params})`. {doc}\nExamples:\n"
         + "\n".join(f"{name}({c}) -> {res}" for c, res in zip(calls, results)))
    tests = "\n".join(f"assert {name}({c}) == {res}" for c, res in zip(calls, results))
    s = f"```python\n{src}```\nTests:\n```python\n{tests}\n```\nFinal answer: {results[-1]}"
    return {"question": q, "answer": s, "final": results[-1]}


# ------------------------------------------------------------------------------------------------------ science
def _sci_kinematics(r: random.Random) -> dict:
    v0, a, t = r.randint(0, 20), r.randint(1, 9), r.randint(2, 12)
    d = v0 * t + Fraction(a * t * t, 2)
    q = (f"A cart starts at {v0} m/s and accelerates uniformly at {a} m/s^2 for {t} s. How far does it travel, "
         "in metres?")
    s = (f"For uniform acceleration, d = v0 t + a t^2 / 2 = {v0} * {t} + {a} * {t}^2 / 2 = {v0 * t} + "
         f"{_frac(Fraction(a * t * t, 2))} = {_frac(d)} m.\nFinal answer: {_frac(d)}")
    return {"question": q, "answer": s, "final": _frac(d)}


def _sci_ohm(r: random.Random) -> dict:
    r1, r2, v = r.randint(2, 60), r.randint(2, 60), r.choice([3, 6, 9, 12, 24, 48])
    par = r.random() < 0.5
    req = Fraction(r1 * r2, r1 + r2) if par else Fraction(r1 + r2)
    i = Fraction(v) / req
    kind = "in parallel" if par else "in series"
    q = f"Resistors of {r1} ohm and {r2} ohm are connected {kind} across a {v} V battery. What current flows from the battery (in amperes, as a fraction)?"
    how = (f"In parallel, R = R1 R2 / (R1 + R2) = {r1 * r2}/{r1 + r2} = {_frac(req)} ohm." if par
           else f"In series, R = R1 + R2 = {_frac(req)} ohm.")
    s = f"{how}\nBy Ohm's law, I = V / R = {v} / {_frac(req)} = {_frac(i)} A.\nFinal answer: {_frac(i)}"
    return {"question": q, "answer": s, "final": _frac(i)}


_ELEMENTS = {"H": 1, "C": 12, "N": 14, "O": 16, "Na": 23, "S": 32, "Cl": 35.5, "Ca": 40}
_MOLECULES = {"water": {"H": 2, "O": 1}, "carbon dioxide": {"C": 1, "O": 2}, "methane": {"C": 1, "H": 4},
              "ammonia": {"N": 1, "H": 3}, "sodium chloride": {"Na": 1, "Cl": 1}, "glucose": {"C": 6, "H": 12, "O": 6},
              "sulfuric acid": {"H": 2, "S": 1, "O": 4}, "calcium carbonate": {"Ca": 1, "C": 1, "O": 3}}


def _sci_moles(r: random.Random) -> dict:
    name = r.choice(sorted(_MOLECULES))
    comp = _MOLECULES[name]
    mm = sum(Fraction(str(_ELEMENTS[e])) * k for e, k in comp.items())
    mol = r.randint(1, 12)
    mass = mm * mol
    q = (f"Using atomic masses {', '.join(f'{e} = {_ELEMENTS[e]}' for e in comp)} g/mol, what is the mass in "
         f"grams of {mol} mol of {name}?")
    terms = " + ".join(f"{k} * {_ELEMENTS[e]}" for e, k in comp.items())
    s = (f"The molar mass of {name} is {terms} = {float(mm):g} g/mol.\nMass = n M = {mol} * {float(mm):g} = "
         f"{float(mass):g} g.\nFinal answer: {float(mass):g}")
    return {"question": q, "answer": s, "final": f"{float(mass):g}"}


def _sci_gas(r: random.Random) -> dict:
    p1, v1, t1 = r.randint(1, 5), r.randint(2, 20), r.choice([200, 250, 300, 400])
    t2 = r.choice([t for t in (150, 300, 450, 600) if t != t1])
    p2 = r.randint(1, 5)
    v2 = Fraction(p1 * v1 * t2, t1 * p2)
    q = (f"A fixed amount of ideal gas occupies {v1} L at {p1} atm and {t1} K. What volume (in litres) does it "
         f"occupy at {p2} atm and {t2} K?")
    s = (f"The combined gas law gives p1 V1 / T1 = p2 V2 / T2, so V2 = p1 V1 T2 / (T1 p2) = "
         f"{p1} * {v1} * {t2} / ({t1} * {p2}) = {_frac(v2)} L.\nFinal answer: {_frac(v2)}")
    return {"question": q, "answer": s, "final": _frac(v2)}


def _sci_genetics(r: random.Random) -> dict:
    g1, g2 = r.choice(["AA", "Aa", "aa"]), r.choice(["AA", "Aa", "aa"])
    kids = [x + y for x in g1 for y in g2]
    rec = Fraction(sum(k == "aa" for k in kids), 4)
    q = (f"In a cross between parents with genotypes {g1} and {g2} (A dominant over a), what fraction of the "
         "offspring is expected to show the recessive phenotype?")
    s = (f"The Punnett square gives offspring {', '.join(''.join(sorted(k)) for k in kids)}.\n"
         f"Only aa shows the recessive phenotype: {sum(k == 'aa' for k in kids)} of 4, i.e. {_frac(rec)}.\n"
         f"Final answer: {_frac(rec)}")
    return {"question": q, "answer": s, "final": _frac(rec)}


SCIENCE = [_sci_kinematics, _sci_ohm, _sci_moles, _sci_gas, _sci_genetics]


def generate(kind: str, n: int, seed: int) -> list[dict]:
    r = random.Random(f"{kind}:{seed}")
    fns = {"math": MATH, "science": SCIENCE, "code": [_code]}[kind]
    return [fns[i % len(fns)](r) for i in range(n)]


# (file name, kind, records, seed)
GENERATED = [("math_generated.jsonl", "math", 2000, 0), ("code_generated.jsonl", "code", 500, 0),
             ("science_generated.jsonl", "science", 1000, 0)]


def render(records: list[dict]) -> str:
    return "".join(json.dumps(rec, ensure_ascii=True) + "\n" for rec in records)


def main() -> None:
    for name, kind, n, seed in GENERATED:
        (HERE / name).write_text(render(generate(kind, n, seed)))


if __name__ == "__main__":
    main()
