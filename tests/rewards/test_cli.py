"""`python -m prism_fast.rewards score` as a real subprocess: output order, summary line, exit codes, FILE:LINE."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "prism_fast.rewards", "score", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return str(path)


def test_score_math_file_to_stdout_and_out(tmp_path):
    src = _write(tmp_path / "in.jsonl", [
        {"response": "<think>2+2</think> \\boxed{4}", "reference": "4"},
        "",
        {"response": "<think>2+2</think> \\boxed{5}", "reference": "4"},
        {"response": "\\boxed{4}", "reference": "4"},
        {"response": "<think>2+2", "reference": "4", "truncated": True},
    ])
    p = _cli("--domain", "math", "--input", src, "--workers", "2")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["reason"] for r in rows] == ["ok", "wrong", "format", "truncated"]
    assert rows[0] == {"reward": 1.0, "correct": 1.0, "reason": "ok"}
    summary = p.stderr.strip().splitlines()[-1]
    assert summary.startswith("scored 4 items: mean reward 0.2500;") and "format=1" in summary, summary

    out = tmp_path / "out.jsonl"
    p = _cli("--domain", "math", "--input", src, "--out", str(out), "--no-think", "--timeout", "3")
    assert p.returncode == 0 and p.stdout == ""
    assert [json.loads(line)["reason"] for line in out.read_text().splitlines()] == ["ok", "wrong", "ok", "truncated"]


def test_code_and_mc_domains(tmp_path):
    code = _write(tmp_path / "code.jsonl", [{"response": "```python\nprint(input()[::-1])\n```",
                                            "reference": {"tests": [{"input": "abc", "output": "cba"}]}}])
    p = _cli("--domain", "code", "--input", code, "--no-think", "--workers", "1")
    assert p.returncode == 0 and json.loads(p.stdout)["reason"] == "ok", p.stderr
    mc = _write(tmp_path / "mc.jsonl", [{"response": "Answer: (D)", "reference": "D"}])
    p = _cli("--domain", "mc", "--input", mc, "--no-think", "--workers", "1")
    assert p.returncode == 0 and json.loads(p.stdout)["reward"] == 1.0


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"reference": "4"}), 'expected an object with "response" and "reference"'),
    (json.dumps({"response": 4, "reference": "4"}), '"response" must be a string'),
    (json.dumps({"response": "x", "reference": ""}), "math reference is empty"),
    (json.dumps({"response": "x", "reference": "4", "truncated": "yes"}), '"truncated" must be true or false'),
])
def test_malformed_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    src = _write(tmp_path / "bad.jsonl", [{"response": "\\boxed{4}", "reference": "4"}, "", line])
    p = _cli("--domain", "math", "--input", src)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == f"error: {src}:3: {message}" or p.stderr.strip().startswith(f"error: {src}:3: {message}")


def test_usage_errors(tmp_path):
    p = _cli("--domain", "math", "--input", str(tmp_path / "missing.jsonl"))
    assert p.returncode == 2 and "missing.jsonl: cannot read" in p.stderr
    p = _cli("--domain", "chem", "--input", "x")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    p = _cli("--domain", "math", "--input", "x", "--timeout", "0")
    assert p.returncode == 2 and "--timeout must be > 0" in p.stderr
    code = _write(tmp_path / "code.jsonl", [{"response": "```python\nprint(1)\n```",
                                            "reference": {"tests": [{"input": "", "output": "1"}]}}])
    p = _cli("--domain", "code", "--input", code, "--no-think", env=dict(os.environ, PRISM_SANDBOX_PYTHON="/no/py3"))
    assert p.returncode == 2 and p.stderr.startswith("error: sandbox interpreter /no/py3 not found"), p.stderr


def test_all_failed_batch_is_reported_as_such(tmp_path):
    nested = "\\boxed{" + "(" * 31 + "1" + ")" * 31 + "}"
    src = _write(tmp_path / "hang.jsonl", [{"response": nested, "reference": "1"}] * 2)
    p = _cli("--domain", "math", "--input", src, "--no-think", "--timeout", "1", "--workers", "2")
    assert p.returncode == 0
    assert "timeout=2" in p.stderr and "every item timed out or crashed" in p.stderr, p.stderr
