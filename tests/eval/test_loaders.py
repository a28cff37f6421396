"""Loaders on small files in the public schemas (JSONL and Parquet, written here), and their errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism_fast.entry import UserError
from prism_fast.eval.benchmarks import BENCHMARKS, load_benchmark, parse_bench_arg
from prism_fast.eval.loaders import decode_lcb_tests, encode_lcb_tests


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


MATH500 = [{"problem": "What is $1+1$?", "solution": "...", "answer": "2", "subject": "Algebra", "level": 1,
            "unique_id": "test/algebra/1.json"},
           {"problem": "Simplify $\\frac{4}{8}$.", "solution": "...", "answer": "\\frac{1}{2}", "subject": "Algebra",
            "level": 2, "unique_id": "test/algebra/2.json"}]
AIME_CAPS = [{"ID": "2024-I-1", "Problem": "Find $x$.", "Solution": "...", "Answer": 204}]
GPQA = [{"Question": "Which is heavier?", "Correct Answer": "lead\n", "Incorrect Answer 1": "air",
         "Incorrect Answer 2": "helium", "Incorrect Answer 3": "hydrogen", "Record ID": "rec123"}]


@pytest.mark.parametrize("writer", [_jsonl, _parquet])
def test_math500_and_aime(tmp_path, writer):
    ps = load_benchmark("math500", writer(tmp_path / ("m." + ("jsonl" if writer is _jsonl else "parquet")), MATH500))
    assert [p.id for p in ps] == ["test/algebra/1.json", "test/algebra/2.json"]
    assert ps[1].reference == "\\frac{1}{2}" and ps[1].domain == "math"
    assert ps[0].prompt.startswith("What is $1+1$?") and "\\boxed{}" in ps[0].prompt
    aime = load_benchmark("aime24", writer(tmp_path / ("a." + ("jsonl" if writer is _jsonl else "parquet")),
                                           AIME_CAPS))
    assert aime[0].id == "2024-I-1" and aime[0].reference == "204"


def test_gpqa_shuffle_is_fixed_and_keeps_the_answer(tmp_path):
    rows = GPQA + [dict(GPQA[0], **{"Record ID": f"r{i}", "Question": f"q{i}"}) for i in range(12)]
    ps = load_benchmark("gpqa_diamond", _parquet(tmp_path / "g.parquet", rows))
    again = load_benchmark("gpqa_diamond", _jsonl(tmp_path / "g.jsonl", list(reversed(rows))))
    by_id = {p.id: p for p in again}
    for p in ps:
        assert p.domain == "mc" and p.meta["choices"][("ABCD").index(p.reference)] == "lead"
        assert by_id[p.id].reference == p.reference and by_id[p.id].prompt == p.prompt   # order-independent
        assert f"({p.reference}) lead" in p.prompt
    assert len({p.reference for p in ps}) > 1                                         # really shuffled


def test_livecodebench_plain_and_compressed_tests(tmp_path):
    stdin = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]
    functional = [{"input": "[1, 2]\n3", "output": "true", "testtype": "functional"}]
    rows = [
        {"question_title": "A", "question_content": "Add.", "platform": "atcoder", "question_id": "abc1_a",
         "contest_id": "abc1", "contest_date": "2024-08-01T00:00:00", "starter_code": "", "difficulty": "easy",
         "public_test_cases": json.dumps(stdin), "private_test_cases": encode_lcb_tests(private), "metadata": "{}"},
        {"question_title": "B", "question_content": "Has sum.", "platform": "leetcode", "question_id": "lc2",
         "contest_id": "w1", "contest_date": "2024-08-02T00:00:00",
         "starter_code": "class Solution:\n    def hasSum(self, nums, k):\n        ", "difficulty": "medium",
         "public_test_cases": json.dumps(functional), "private_test_cases": json.dumps([]),
         "metadata": json.dumps({"func_name": "hasSum"})},
    ]
    ps = load_benchmark("livecodebench", _jsonl(tmp_path / "lcb.jsonl", rows))
    assert ps[0].reference == {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]}
    assert ps[0].meta["platform"] == "atcoder"
    ref = ps[1].reference
    assert ref["entry_point"] == "Solution" and "hasSum" in ref["test_code"]
    # the generated check() really runs the functional test against a solution
    ns = {}
    exec("class Solution:\n    def hasSum(self, nums, k):\n        return sum(nums) == k\n" + ref["test_code"], ns)
    ns["check"](ns["Solution"])
    assert decode_lcb_tests(encode_lcb_tests(private), "x", 0) == private


def test_codeforces_and_humaneval(tmp_path):
    rows = [{"id": "1A", "contest_id": "1", "index": "A", "title": "Theatre Square", "description": "Pave it.",
             "input_format": "n m a", "output_format": "count", "examples": [{"input": "6 6 4\n", "output": "4\n"}],
             "note": None, "official_tests": [{"input": "6 6 4\n", "output": "4\n"}, {"input": "1 1 1\n",
                                                                                      "output": "1\n"}],
             "interaction_format": None, "rating": 1000},
            {"id": "2B", "description": "Interactive.", "official_tests": [{"input": "1", "output": "1"}],
             "interaction_format": "talk to the judge"}]
    with pytest.warns(UserWarning, match="skipped 1 interactive"):
        ps = load_benchmark("codeforces", _parquet(tmp_path / "cf.parquet", rows))
    assert len(ps) == 1 and ps[0].id == "1A" and len(ps[0].reference["tests"]) == 2
    assert "## Example 1" in ps[0].prompt and "Theatre Square" in ps[0].prompt
    he = load_benchmark("humaneval", limit=3)
    assert [p.id for p in he] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert he[0].reference["entry_point"] == "has_close_elements" and "def check" in he[0].reference["test_code"]


def test_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'mmlu'; known: .*aime24.*math500"):
        load_benchmark("mmlu")
    with pytest.raises(UserError, match="has no bundled data: pass --bench math500=FILE"):
        load_benchmark("math500")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        load_benchmark("math500", tmp_path / "empty.jsonl")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question_text": "x", "answer": "1"}])
    with pytest.raises(UserError, match=r"row 0: missing field 'problem' .*fields present: \['answer', "):
        load_benchmark("aime25", bad)
    with pytest.raises(UserError, match="missing field 'Incorrect Answer 2'"):
        load_benchmark("gpqa_diamond", _jsonl(tmp_path / "g.jsonl", [{k: v for k, v in GPQA[0].items()
                                                                       if k != "Incorrect Answer 2"}]))
    (tmp_path / "torn.jsonl").write_text('{"problem": "a", "answer": "1"}\n{"problem": \n')
    with pytest.raises(UserError, match="torn.jsonl:2: not a JSON object"):
        load_benchmark("math500", tmp_path / "torn.jsonl")
    with pytest.raises(FileNotFoundError):
        load_benchmark("math500", tmp_path / "missing.jsonl")
    dup = _jsonl(tmp_path / "dup.jsonl", [MATH500[0], MATH500[0]])
    with pytest.raises(UserError, match="occurs more than once"):
        load_benchmark("math500", dup)
    lcb = {"question_content": "x", "public_test_cases": "not json, not base64!", "private_test_cases": "[]"}
    with pytest.raises(UserError, match="neither JSON nor LiveCodeBench's compressed form"):
        load_benchmark("livecodebench", _jsonl(tmp_path / "l.jsonl", [lcb]))
    assert parse_bench_arg("math500=/x/y.parquet") == ("math500", tmp_path.__class__("/x/y.parquet"))
    with pytest.raises(UserError, match="empty FILE"):
        parse_bench_arg("math500=")


def test_registry_is_extensible():
    from prism_fast.eval.benchmarks import BenchmarkSpec, Decoding, register
    from prism_fast.eval.loaders import parse_math
    spec = BenchmarkSpec("tmp_longctx", "long_context", parse_math, "test", decoding=Decoding(0.0, 1.0, 1, 8))
    try:
        register(spec)
        assert BENCHMARKS["tmp_longctx"] is spec and not spec.aggregated
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
    finally:
        BENCHMARKS.pop("tmp_longctx", None)


def test_cli_unknown_benchmark_is_one_line_error(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "prism_fast.eval", "--model", "smollm2", "--bench", "nope",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown benchmark 'nope'; known: ")
