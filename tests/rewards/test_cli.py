"""`python -m prism_fast.rewards score` as a real subprocess: output order, summary line, exit codes, FILE:LINE."""
import json
import os
import subprocess
import sys
import types

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
    assert p.returncode == 2 and "--timeout 0.0: must be a finite number of seconds in (0, 86400]" in p.stderr
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


# ------------------------------------------------------------------------------ bad inputs (issue 25): one line
def _one_error(p, *needles, status=2):
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == status and len(lines) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("timeout", ["inf", "nan", "1e12"])
def test_timeout_must_be_finite_and_positive(tmp_path, timeout):
    # --timeout inf (or 1e12) used to overflow the dispatcher's deadline: every item "crash", exit 0
    src = _write(tmp_path / "in.jsonl", [{"response": "\\boxed{4}", "reference": "4"}])
    p = _cli("--domain", "math", "--input", src, "--no-think", "--timeout", timeout, "--workers", "1")
    _one_error(p, f"--timeout {float(timeout)}", "(0, 86400]")
    assert p.stdout == ""


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_reference_is_an_input_error(tmp_path, constant):
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "\\\\boxed{4}", "reference": %s}\n' % constant)
    p = _cli("--domain", "math", "--input", str(src), "--no-think", "--workers", "1")
    _one_error(p, f"{src}:1: {constant} is not a JSON number")
    assert p.stdout == ""


def test_binary_input_names_the_file(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00\x01\xff\xfe binary \x80\x81\n")
    p = _cli("--domain", "math", "--input", str(src))
    _one_error(p, f"{src}:1: not UTF-8 text")


def test_out_that_is_a_directory_is_refused_before_scoring(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"response": "\\boxed{4}", "reference": "4"}])
    (tmp_path / "dir").mkdir()
    p = _cli("--domain", "math", "--input", src, "--out", str(tmp_path / "dir"))
    _one_error(p, f"--out {tmp_path / 'dir'} is a directory")
    assert not any((tmp_path / "dir").iterdir())


def test_a_run_where_every_item_crashed_exits_non_zero(tmp_path, monkeypatch, capsys):
    """In process through run_entry, with a Rewarder whose verifier crashes on every item (what --timeout inf
    produced before it was refused): the rows are still written, the exit is 1 with one line."""
    from prism_fast.entry import run_entry
    from prism_fast.rewards import __main__ as cli, api
    from prism_fast.rewards.items import RewardResult

    class CrashingRewarder:
        def __init__(self, **kw):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, items):
            res = [RewardResult(reward=0.0, correct=0.0, format_ok=True, reason="crash", seconds=0.0,
                                detail="OverflowError: timeout value is too large") for _ in items]
            return types.SimpleNamespace(done=lambda: True, n_done=len(items), result=lambda: res, all_failed=True)

    monkeypatch.setattr(api, "Rewarder", CrashingRewarder)
    src = _write(tmp_path / "in.jsonl", [{"response": "\\boxed{4}", "reference": "4"}] * 3)
    out = tmp_path / "scores.jsonl"
    status = run_entry(cli.main, ["score", "--domain", "math", "--input", src, "--no-think", "--out", str(out)])
    err = capsys.readouterr().err
    p = subprocess.CompletedProcess([], status, "", err)
    _one_error(p, "every one of the 3 items crashed", "OverflowError", status=1)
    assert [json.loads(x)["reason"] for x in out.read_text().splitlines()] == ["crash"] * 3
