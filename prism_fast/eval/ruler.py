"""RULER-style long-context retention checks, generated locally and deterministically by seed at any length.

Tasks (after RULER, Hsieh et al. 2024; the paper reports RULER 8k-128k):
  niah_single      one "special magic number" for one key hidden in a haystack; recall it
  niah_multikey    four needles with different keys (three distractors); recall the value of one key
  niah_multivalue  four values for the same key; recall all of them
  vt               variable tracking: chains `VAR X = VAR Y` rooted at a number, plus distractor chains; list every
                   variable that ends up holding the number
  cwe              common-word extraction: a numbered list of words where 10 words repeat far more often than
                   the rest; name the 10 most common
Haystack: RULER's "noise" filler (the same five sentences repeated), so the only information in the context is
what the task plants. Lengths are in tokens of the tokenizer given (the bundled sets use SmolLM2's): the context
is filled to at most `length` tokens including the question. Problem i of (task, length, seed) depends on those
four values only (its own random.Random), so sets regenerate identically anywhere.
Scoring is RULER's string match: the fraction of reference strings that occur (case-insensitive) in the answer;
1.0 per problem means every reference was found (niah_single: exact recall of the one number).

CLI (writes a JSONL that `python -m prism_fast.eval --bench ruler_niah_single_4k=FILE` reads):
    python -m prism_fast.eval.ruler --task niah_single --length 16384 --num 50 --seed 0 --tokenizer DIR --out F
Registered benchmarks: ruler_<task>_<k>k for k in 4, 8, 16, 32, 64, 128 (group "long_context": reported per
benchmark, outside the paper's averages; greedy decoding). Without =FILE the set is generated once with the
SmolLM2 tokenizer into ~/.cache/prism_fast/ruler/ (NUM_BUNDLED problems).
"""
from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

from prism_fast.entry import UserError
from prism_fast.eval.benchmarks import BenchmarkSpec, Decoding, register
from prism_fast.eval.loaders import Problem

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe")
LENGTHS_K = (4, 8, 16, 32, 64, 128)
NUM_BUNDLED = 50
CACHE = Path("~/.cache/prism_fast/ruler").expanduser()
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
_WORDS = ("apple river stone cloud forest candle mirror engine garden pocket silver harbor ladder violin "
          "meadow copper lantern velvet crystal thunder pepper marble shadow breeze falcon orchard ribbon "
          "saddle timber walnut beacon canyon dagger ember fossil glacier hammock island jigsaw kettle lagoon "
          "magnet nectar oyster pebble quartz raven summit tundra umbrella vessel wizard yarrow zephyr anchor "
          "bramble cactus dolphin easel fjord gazebo hazel igloo jasmine kiosk lilac mosaic nomad obelisk").split()
_MAX_NEW = {"niah_single": 32, "niah_multikey": 32, "niah_multivalue": 64, "vt": 48, "cwe": 96}


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _key(rng: random.Random) -> str:
    return "-".join(rng.choice(_WORDS) for _ in range(2))


def _var(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


class _Sizer:
    """Counts tokens of a text with the tokenizer (no special tokens)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __call__(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


def _fill(sizer: _Sizer, length: int, template: str, needles: list[str], rng: random.Random,
          reserve: int = 0) -> str:
    """`template` with {context} = NOISE repeated to fill `length` - `reserve` tokens in total, needles inserted at
    random sentence boundaries (depth uniform in the haystack)."""
    length -= reserve
    fixed = sizer(template.format(context="".join(needles)))
    per = sizer(NOISE * 8) / 8                                          # tokens per filler repeat
    n = max(0, int((length - fixed) / per))
    while True:
        sentences = [NOISE] * n
        for nd in needles:
            sentences.insert(rng.randint(0, len(sentences)), nd + " ")
        text = template.format(context="".join(sentences))
        if sizer(text) <= length or n == 0:
            return text
        n = max(0, n - max(1, n // 50))                                  # trim ~2% and retry (rare)


_NIAH_TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
                  "I will quiz you about the numbers afterwards.\n{context}\n")


def _niah(sizer, length, rng, kind: str) -> tuple[str, list[str]]:
    keys = [_key(rng) for _ in range(4 if kind == "niah_multikey" else 1)]
    while len(set(keys)) < len(keys):
        keys = [_key(rng) for _ in keys]
    if kind == "niah_multivalue":
        values = [_number(rng) for _ in range(4)]
        needles = [f"One of the special magic numbers for {keys[0]} is: {v}." for v in values]
        question = (f"What are all the special magic numbers for {keys[0]} mentioned in the provided text? "
                    f"The special magic numbers for {keys[0]} mentioned in the provided text are")
        answers = values
    else:
        values = [_number(rng) for _ in keys]
        needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
        target = rng.randrange(len(keys))
        question = (f"What is the special magic number for {keys[target]} mentioned in the provided text? "
                    f"The special magic number for {keys[target]} mentioned in the provided text is")
        answers = [values[target]]
    template = _NIAH_TEMPLATE + question.replace("{", "{{").replace("}", "}}")
    return _fill(sizer, length, template, needles, rng), answers


def _vt(sizer, length, rng) -> tuple[str, list[str]]:
    value, other = _number(rng), _number(rng)
    names = set()
    while len(names) < 10:
        names.add(_var(rng))
    names = sorted(names)
    rng.shuffle(names)
    chain, distract = names[:5], names[5:]
    needles = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
    needles += [f"VAR {distract[0]} = {other}."] + [f"VAR {b} = VAR {a}." for a, b in zip(distract, distract[1:])]
    # The chain order matters (each assignment after the one it reads), so needles keep their relative order.
    template = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n{context}\n"
                f"Question: Find all variables that are assigned the value {value} in the text above. Answer: "
                f"According to the chain(s) of variable assignment in the text above, {len(chain)} variables are "
                f"assigned the value {value}, they are:")
    return _fill_ordered(sizer, length, template, needles, rng), chain


def _fill_ordered(sizer, length, template, needles, rng) -> str:
    """Like _fill, but the needles appear in their given order (sorted random insertion points)."""
    text = _fill(sizer, length, template, [], rng, reserve=sizer(" ".join(needles)) + len(needles))
    parts = text.split(NOISE)
    slots = sorted(rng.randint(1, max(1, len(parts) - 1)) for _ in needles)
    for off, (slot, nd) in enumerate(zip(slots, needles)):
        parts.insert(slot + off, nd + " ")
    out = NOISE.join(parts)
    while sizer(out) > length and NOISE in out:                           # the needles pushed it over: trim filler
        out = out.replace(NOISE, "", max(1, out.count(NOISE) // 50))
    return out


def _cwe(sizer, length, rng) -> tuple[str, list[str]]:
    words = rng.sample(_WORDS, len(_WORDS))
    common, rare = words[:10], words[10:]
    template = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                "the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
                "above list? Answer: The top 10 words that appear most often in the list are:")
    n_words, best = 64, None
    for _ in range(8):                                                    # resize from the measured length
        # n = 10 common words x reps + the rest spread over the rare words; reps = n / (10 + 0.3 len(rare)) makes
        # each rare word appear ~reps / 3 times.
        reps = max(3, n_words * 10 // (100 + 3 * len(rare)))
        n_rare = max(1, n_words - 10 * reps)
        seq = [w for w in common for _ in range(reps)] + [rare[i % len(rare)] for i in range(n_rare)]
        rng.shuffle(seq)
        text = template.format(context="\n".join(f"{i + 1}. {w}" for i, w in enumerate(seq)))
        n = sizer(text)
        if n <= length:
            best = text
            if n >= 0.95 * length:
                break
        n_words = max(30, int(len(seq) * length / n * 0.97))
    if best is None:
        raise UserError(f"cwe: {length} tokens cannot hold the 30-word minimum list; use a longer --length")
    return best, common


def generate(task: str, length: int, num: int, seed: int, tokenizer) -> list[dict]:
    """`num` problems of `task` at `length` tokens: [{"id", "task", "length", "prompt", "answers"}]."""
    if task not in TASKS:
        raise UserError(f"unknown RULER task {task!r}; choose one of {', '.join(TASKS)}")
    if not 256 <= length <= 1_048_576:
        raise UserError(f"--length {length}: use 256 .. 1048576 tokens (RULER: 4096 .. 131072)")
    sizer = _Sizer(tokenizer)
    rows = []
    for i in range(num):
        rng = random.Random(f"{task}|{length}|{seed}|{i}")
        if task.startswith("niah"):
            prompt, answers = _niah(sizer, length, rng, task)
        elif task == "vt":
            prompt, answers = _vt(sizer, length, rng)
        else:
            prompt, answers = _cwe(sizer, length, rng)
        rows.append({"id": f"{task}-{length}-{seed}-{i}", "task": task, "length": length, "prompt": prompt,
                     "answers": answers})
    return rows


def string_match_all(response: str, answers: list[str]) -> float:
    """RULER's metric: the fraction of reference strings found in the response (case-insensitive)."""
    low = response.lower()
    return sum(a.lower() in low for a in answers) / len(answers)


def score(problems: list[Problem], responses: list[str]) -> list[float]:
    return [string_match_all(r, p.reference) for p, r in zip(problems, responses)]


def parse_ruler(rows: list[dict], source: str) -> list[Problem]:
    out = []
    for n, r in enumerate(rows):
        if not {"id", "prompt", "answers"} <= set(r) or not r["answers"]:
            raise UserError(f"{source}: row {n} is not a RULER problem (needs id, prompt, non-empty answers); "
                            f"generate files with `python -m prism_fast.eval.ruler`")
        out.append(Problem(id=str(r["id"]), domain="long_context", prompt=r["prompt"], reference=list(r["answers"]),
                           meta={"task": r.get("task"), "length": r.get("length")}))
    return out


def bundled_file(task: str, length: int, seed: int = 0, num: int = NUM_BUNDLED) -> Path:
    """The default set of (task, length): generated once with the SmolLM2 tokenizer, then read from the cache."""
    path = CACHE / f"{task}_{length}_seed{seed}_n{num}.jsonl"
    if not path.is_file():
        from prism_fast.models import load_tokenizer, smollm2_hf_dir  # noqa: PLC0415
        rows = generate(task, length, num, seed, load_tokenizer(smollm2_hf_dir()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)                                                 # atomic: concurrent evals never see half
    return path


def _register_all() -> None:
    for task in TASKS:
        for k in LENGTHS_K:
            register(BenchmarkSpec(
                f"ruler_{task}_{k}k", "long_context", parse_ruler,
                f"RULER-style {task} at {k * 1024} tokens (python -m prism_fast.eval.ruler writes FILE)",
                bundled=lambda t=task, n=k * 1024: bundled_file(t, n),
                decoding=Decoding(temperature=0.0, top_p=1.0, n=1, max_new_tokens=_MAX_NEW[task]),
                scorer=score), replace=True)


_register_all()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prism_fast.eval.ruler", description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--length", type=int, required=True, help="context length in tokens of --tokenizer")
    ap.add_argument("--num", type=int, default=NUM_BUNDLED)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="smollm2", help="HF tokenizer directory, .gguf, or smollm2")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from prism_fast.models import load_tokenizer, smollm2_hf_dir  # noqa: PLC0415
    tok = load_tokenizer(smollm2_hf_dir() if a.tokenizer == "smollm2" else a.tokenizer)
    rows = generate(a.task, a.length, a.num, a.seed, tok)
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(a.out)
    return 0


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    raise SystemExit(run_entry(main))
