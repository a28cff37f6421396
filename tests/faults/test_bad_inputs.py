"""Bad inputs that used to destroy, execute or lie (issue 25): each runs the real CLI and checks for exit 2, one
`error:` line naming what to change, no traceback, and that nothing was lost (old outputs byte for byte) or
run. The rewards CLI's cases are in tests/rewards/test_cli.py."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess

import pytest

from prism_fast.entry import run_entry

from tests.faults import _faults
from tests.faults._bad import cli, one_error, snapshot


# ------------------------------------------------------------------------------------------------ data prepare
@pytest.fixture
def jsonl(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"good document {i}"}) + "\n" for i in range(5)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    return good, bad


def test_failed_prepare_keeps_the_previous_output(tmp_path, jsonl, hf_tokenizer_dir):
    good, bad = jsonl
    out = tmp_path / "shard"
    p = cli("prism_fast.data", "prepare", "--input", good, "--tokenizer", hf_tokenizer_dir, "--out", out)
    assert p.returncode == 0, p.stderr
    (out / "README").write_text("notes the user keeps beside the shard")
    before = snapshot(out)
    p = cli("prism_fast.data", "prepare", "--input", bad, "--tokenizer", hf_tokenizer_dir, "--out", out)
    one_error(p, f"{bad}:2")
    assert snapshot(out) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "shard"]  # no staging left
    from prism_fast.data.shards import verify_shard
    assert verify_shard(out).num_docs == 5
    good.write_text(json.dumps({"text": "the corrected input"}) + "\n")  # the fixed rerun replaces the shard
    p = cli("prism_fast.data", "prepare", "--input", good, "--tokenizer", hf_tokenizer_dir, "--out", out)
    assert p.returncode == 0, p.stderr
    assert verify_shard(out).num_docs == 1 and (out / "README").exists()


def test_prepare_out_that_is_a_file(tmp_path, jsonl, hf_tokenizer_dir):
    good, _ = jsonl
    f = tmp_path / "taken"
    f.write_text("precious")
    p = cli("prism_fast.data", "prepare", "--input", good, "--tokenizer", hf_tokenizer_dir, "--out", f)
    one_error(p, f"--out {f}", "is a file")
    assert f.read_text() == "precious"


@pytest.mark.parametrize("content", [None, "garbage, not JSON"])
def test_prepare_bad_tokenizer_dir_is_named(tmp_path, jsonl, content):
    good, _ = jsonl
    tok = tmp_path / "tok"
    tok.mkdir()
    if content is not None:
        (tok / "tokenizer.json").write_text(content)
    p = cli("prism_fast.data", "prepare", "--input", good, "--tokenizer", tok, "--out", tmp_path / "o")
    one_error(p, f"--tokenizer {tok}")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ config ranges
@pytest.mark.parametrize("module,override,field,allowed", [
    ("prism_fast.midtrain", "--optim.lr=inf", "optim.lr=inf", "> 0"),
    ("prism_fast.midtrain", "--optim.lr=nan", "optim.lr=nan", "> 0"),
    ("prism_fast.midtrain", "--optim.weight_decay=-0.1", "optim.weight_decay=-0.1", ">= 0"),
    ("prism_fast.midtrain", "--train.max_nonfinite=-1", "train.max_nonfinite=-1", ">= 1"),
    ("prism_fast.midtrain", "--optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5]", "in [0, 1)"),
    ("prism_fast.midtrain", "--schedule.min_lr_ratio=nan", "schedule.min_lr_ratio=nan", "in [0, 1]"),
    ("prism_fast.rl", "--rollout.top_p=0", "rollout.top_p=0.0", "in (0, 1]"),
    ("prism_fast.rl", "--reward.timeout_s=0", "reward.timeout_s=0.0", "> 0"),
    ("prism_fast.rl", "--reward.timeout_s=inf", "reward.timeout_s=inf", "> 0"),
    ("prism_fast.rl", "--reward.num_workers=-1", "reward.num_workers=-1", ">= 0"),
    ("prism_fast.rl", "--optim.lr=inf", "optim.lr=inf", "> 0"),
    ("prism_fast.rl", "--loss.adv_eps=nan", "loss.adv_eps=nan", "> 0"),
])
def test_print_config_refuses_out_of_range(module, override, field, allowed, capsys):
    # in-process through run_entry (the entry's own path; a subprocess per case costs ~20 s of imports here)
    main = importlib.import_module(f"{module}.__main__" if module == "prism_fast.rl" else module).main
    status = run_entry(main, ["--print-config", override])
    out, err = capsys.readouterr()
    line = one_error(subprocess.CompletedProcess([], status, out, err), field, allowed)
    assert f"--{field.split('=')[0]}" in line
    assert out == ""


def test_lr_inf_trains_nothing_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    p = cli("prism_fast.midtrain", "--recipe", "tiny", "--optim.lr=inf", f"--train.run_dir={run_dir}",
            "--train.steps=3")
    one_error(p, "optim.lr=inf", "> 0")
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def step_dir(tmp_path_factory, base):
    """A real 3-step tiny run's final checkpoint (intact, finite weights)."""
    run_dir = tmp_path_factory.mktemp("export_run")
    _faults.run(None, base + [f"--train.run_dir={run_dir}", "--train.steps=3", "--checkpoint.interval=3",
                              "--checkpoint.export_final=false"])
    return run_dir / "checkpoints" / "step-3"


def _copy_ckpt(step_dir, tmp_path):
    d = tmp_path / "run" / "checkpoints" / "step-3"
    shutil.copytree(step_dir, d)
    return d


def _export(ckpt, out, *extra):
    return cli("prism_fast.export", "--ckpt", ckpt, "--out", out, "--dtype", "fp32", *extra)


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "garbage_file", "no_complete"])
def test_export_bad_ckpt_is_one_line(tmp_path, kind):
    ckpt = tmp_path / "ckpt"
    if kind == "empty_dir":
        ckpt.mkdir()
    elif kind == "garbage_file":
        ckpt.write_bytes(os.urandom(4096))
    elif kind == "no_complete":
        ckpt = tmp_path / "run" / "checkpoints" / "step-4"
        ckpt.mkdir(parents=True)
        (ckpt / "__0_0.distcp").write_bytes(os.urandom(1024))
    p = _export(ckpt, tmp_path / "hf")
    one_error(p, str(ckpt))
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # step_dir launches a training job (like every job-launching fault test)
def test_export_out_that_is_a_file(step_dir, tmp_path):
    out = tmp_path / "taken"
    out.write_text("precious")
    p = _export(step_dir, out)
    one_error(p, f"--out {out} is a file")
    assert out.read_text() == "precious"


@pytest.mark.slow  # step_dir launches a training job (like every job-launching fault test)
def test_export_refuses_a_damaged_checkpoint(step_dir, tmp_path):
    d = _copy_ckpt(step_dir, tmp_path)
    shard = d / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40  # a flipped bit in the tensor bytes: loads fine, weights garbage (e.g. 4e36)
    shard.write_bytes(bytes(data))
    p = _export(d, tmp_path / "hf")
    one_error(p, f"{d} is damaged", str(shard), "CRC-32")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # step_dir launches a training job (like every job-launching fault test)
def test_garbage_complete_marker_is_damage_not_legacy(step_dir, tmp_path):
    d = _copy_ckpt(step_dir, tmp_path)
    (d / "COMPLETE").write_bytes(b"\x00garbage{{ not a manifest")
    p = cli("prism_fast.checkpoint", "verify", d)
    assert p.returncode == 1 and "damaged" in p.stdout and "legacy" not in p.stdout, p.stdout + p.stderr
    p = _export(d, tmp_path / "hf")
    one_error(p, "is damaged", str(d / "COMPLETE"))
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # step_dir launches a training job (like every job-launching fault test)
def test_export_refuses_nonfinite_weights_unless_allowed(step_dir, tmp_path):
    d = tmp_path / "run" / "checkpoints" / "step-3"
    _nan_checkpoint(step_dir, d)
    p = _export(d, tmp_path / "hf")
    one_error(p, "non-finite weights", "--allow-nonfinite")
    assert not (tmp_path / "hf").exists()
    p = _export(d, tmp_path / "hf", "--allow-nonfinite")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "hf" / "config.json").exists()


def _nan_checkpoint(src, dst):
    """A checkpoint that verifies (fresh manifest) but holds a NaN weight: load src's model part, poison one
    tensor, save it with DCP into dst with src's model_config.json and a manifest of the new files."""
    import torch
    import torch.distributed.checkpoint as dcp

    from prism_fast.checkpoint import integrity
    from prism_fast.models import ModelConfig, build_model
    from prism_fast.train.checkpoint import load_model_weights

    model = build_model(ModelConfig.from_hf_dict(json.loads((src / "model_config.json").read_text())), device="cpu")
    load_model_weights(src, model)
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[name][0, 0] = float("nan")
    dst.mkdir(parents=True)
    dcp.save({"model": state}, checkpoint_id=str(dst), no_dist=True)
    shutil.copy(src / "model_config.json", dst / "model_config.json")
    files = integrity.describe(dst, integrity.content_files(dst))
    (dst / integrity.MARKER).write_bytes(integrity.manifest_bytes(3, files))
    assert integrity.verify(dst) == ("intact", [])
    assert torch.isnan(state[name]).any()


# ------------------------------------------------------------------------------------------------ eval
class _RunsACommand:
    """Unpickling this calls os.system: what a crafted LiveCodeBench file held."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _lcb_row(private: str) -> dict:
    return {"question_content": "Reverse the line.", "question_id": "q1", "metadata": "{}",
            "public_test_cases": json.dumps([{"input": "abc\n", "output": "cba\n", "testtype": "stdin"}]),
            "private_test_cases": private}


def _eval(*args):
    # every case below fails before the model loads (data and options are checked first)
    return cli("prism_fast.eval", "--model", "smollm2", "--limit", "1", "--no-progress", *args)


def test_livecodebench_pickle_never_runs(tmp_path):
    import base64
    import pickle
    import zlib

    from prism_fast.eval.benchmarks import load_benchmark
    from prism_fast.eval.loaders import encode_lcb_tests
    genuine = tmp_path / "genuine.jsonl"  # the release format (a pickled JSON string) still decodes
    genuine.write_text(json.dumps(_lcb_row(encode_lcb_tests([{"input": "x\n", "output": "x\n", "testtype": "stdin"}])))
                       + "\n")
    (problem,) = load_benchmark("livecodebench", genuine)
    assert problem.reference == {"tests": [{"input": "abc\n", "output": "cba\n"}, {"input": "x\n", "output": "x\n"}]}
    marker = tmp_path / "pwned"
    evil = base64.b64encode(zlib.compress(pickle.dumps(_RunsACommand(marker)))).decode()
    f = tmp_path / "lcb.jsonl"
    f.write_text(json.dumps(_lcb_row(evil)) + "\n")
    p = _eval("--bench", f"livecodebench={f}", "--out", tmp_path / "ev")
    one_error(p, str(f), "refusing to load")
    assert not marker.exists(), "the benchmark file ran a command"
    assert not (tmp_path / "ev").exists()


def test_empty_gold_answer_names_file_and_line(tmp_path):
    f = tmp_path / "math.jsonl"
    f.write_text(json.dumps({"problem": "1+1?", "answer": "2", "id": "a"}) + "\n\n"
                 + json.dumps({"problem": "2+2?", "answer": "  ", "id": "b"}) + "\n")
    p = _eval("--bench", f"math500={f}", "--out", tmp_path / "ev")
    one_error(p, f"{f}:3: empty gold answer")
    assert not (tmp_path / "ev").exists()


# Fixed bytes and ids: parameters drawn at collection (os.urandom) differ between xdist workers, which then refuse
# to run the suite.
@pytest.mark.parametrize("name,content", [("garbage.jsonl", bytes(range(128, 192)) + b"\xff\xfe"),
                                          ("garbage.json", b"{not json"),
                                          ("garbage.jsonl.gz", b"\x1f\x8b\x08 truncated")],
                         ids=["binary-jsonl", "bad-json", "truncated-gz"])
def test_garbage_eval_file_is_named(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    p = _eval("--bench", f"math500={f}", "--out", tmp_path / "ev")
    one_error(p, str(f))


def test_bad_temperature_writes_nothing_so_the_rerun_works(tmp_path):
    out = tmp_path / "ev"
    p = _eval("--bench", "math500", "--out", out, "--temperature", "-1")
    one_error(p, "temperature=-1.0", ">= 0", "--temperature")
    assert not out.exists()  # no run_config.json pinning T=-1 for the corrected rerun to trip over


def test_eval_out_that_is_a_file(tmp_path):
    out = tmp_path / "taken"
    out.write_text("precious")
    p = _eval("--bench", "math500", "--out", out)
    one_error(p, f"--out {out} is a file")
    assert out.read_text() == "precious"
