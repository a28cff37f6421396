"""Bad inputs that used to destroy, execute or lie (issue 25): each runs the real CLI and checks for exit 2, one
`error:` line naming what to change, no traceback, and that nothing was lost (old outputs byte for byte) or
run. The rewards CLI's cases are in tests/rewards/test_cli.py."""
from __future__ import annotations

import importlib
import json
import subprocess

import pytest

from prism_fast.entry import run_entry

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
