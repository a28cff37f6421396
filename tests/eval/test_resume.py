"""Resume by killing a real evaluation process: the rerun generates only the missing samples, and its final
numbers (and samples) equal an uninterrupted run with the same seed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["--bench", "math_standin", "--bench", "science_standin", "--limit", "6", "--n", "2",
        "--max-new-tokens", "12", "--max-batch", "2", "--no-progress", "--seed", "7"]


def _cmd(model, out):
    return [sys.executable, "-m", "prism_fast.eval", "--model", str(model), "--out", str(out), *ARGS]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _samples(out):
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]
    return {(r["benchmark"], r["problem_id"], r["sample_index"]): (r["response"], r["correct"]) for r in recs}


def _scores(out):
    r = json.loads((out / "results.json").read_text())
    return r["benchmarks"], r["domains"], r["avg_paper"], r["avg_six"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tiny_model_dir, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cmd(tiny_model_dir, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    samples = killed / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:     # kill as soon as the first chunk is on disk
        if samples.is_file() and samples.stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(_samples(killed))
    with open(samples, "a") as f:                             # a torn last line, as a kill mid-write leaves
        f.write('{"benchmark": "math_standin", "problem_id": "standin/ma')
    total = 2 * 6 * 2
    assert 0 < before < total
    subprocess.run(_cmd(tiny_model_dir, killed), env=_env(), check=True, capture_output=True)
    timing = json.loads((killed / "results.json").read_text())["timing"]
    assert timing["generated_samples"] == total - before       # only the missing samples were generated
    subprocess.run(_cmd(tiny_model_dir, clean), env=_env(), check=True, capture_output=True)
    assert _samples(killed) == _samples(clean)
    assert _scores(killed) == _scores(clean)
    assert sum(1 for x in samples.read_text().splitlines() if x.strip()) == total   # no duplicates, no torn line
    # a third run has nothing left to do
    subprocess.run(_cmd(tiny_model_dir, clean), env=_env(), check=True, capture_output=True)
    assert json.loads((clean / "results.json").read_text())["timing"]["generated_samples"] == 0


def test_rerun_with_other_settings_is_refused(tiny_model_dir, tmp_path):
    from prism_fast.entry import UserError
    from prism_fast.eval.store import check_run_config
    cfg = {"model": "m", "seed": 0, "prompt_format": "chat_template", "require_think": False,
           "benchmarks": {"math_standin": {"n": 2, "temperature": 0.6}}}
    check_run_config(tmp_path, cfg)
    check_run_config(tmp_path, {**cfg, "benchmarks": {"code_standin": {"n": 1}}})       # adding one is fine
    assert set(json.loads((tmp_path / "run_config.json").read_text())["benchmarks"]) == {"math_standin",
                                                                                        "code_standin"}
    with pytest.raises(UserError, match=r"math_standin was run with other settings \{'n': \(2, 4\)\}"):
        check_run_config(tmp_path, {**cfg, "benchmarks": {"math_standin": {"n": 4, "temperature": 0.6}}})
    with pytest.raises(UserError, match="seed=0, this one has 1"):
        check_run_config(tmp_path, {**cfg, "seed": 1})


def test_sample_store_drops_a_torn_tail_and_refuses_damage_in_the_middle(tmp_path):
    from prism_fast.entry import UserError
    from prism_fast.eval.store import SampleStore
    rec = lambda i: {"benchmark": "b", "problem_id": "p", "sample_index": i, "correct": 1.0}  # noqa: E731
    s = SampleStore(tmp_path)
    s.append([rec(0), rec(1)])
    with open(s.path, "a") as f:
        f.write('{"benchmark": "b", "probl')
    s2 = SampleStore(tmp_path)
    assert set(s2.records) == {("b", "p", 0), ("b", "p", 1)}
    s2.append([rec(2)])                                       # starts on a fresh line: the torn tail was cut
    assert [json.loads(x)["sample_index"] for x in s2.path.read_text().splitlines()] == [0, 1, 2]
    s2.path.write_text(s2.path.read_text().replace('"sample_index": 1', '"sample_index": '))
    with pytest.raises(UserError, match=r"samples.jsonl:2: not a sample record"):
        SampleStore(tmp_path)
