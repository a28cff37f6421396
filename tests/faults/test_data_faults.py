"""Damaged data is refused at start with one line naming the file: truncated or tampered tokens.bin / .idx, a
meta.json whose tokenizer fingerprint is not the run's; a failed `prepare` leaves no directory behind; config
mistakes under torchrun print one line from rank 0 and exit 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from prism_fast.data.shards import open_shard, verify_shard
from tests.faults import _faults


@pytest.fixture(scope="module")
def shard(tmp_path_factory, hf_tokenizer_dir):
    from prism_fast.data import prepare
    src = tmp_path_factory.mktemp("raw") / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i}: " + "tokens and more tokens " * (i % 7 + 1)}) + "\n"
                           for i in range(200)))
    out = tmp_path_factory.mktemp("shards") / "web"
    prepare([str(src)], str(hf_tokenizer_dir), str(out), progress=False)
    return out


def _copy(shard, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(shard, dst)
    return dst


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def test_intact_shard_verifies(shard):
    assert verify_shard(shard).num_docs == 200
    assert set(open_shard(shard).meta["checksums"]) == {"tokens.bin", "tokens.idx"}


@pytest.mark.parametrize("name,damage,expect", [
    ("tokens.bin", "truncate", "truncated or overwritten"),
    ("tokens.idx", "truncate", "truncated or overwritten"),
    ("tokens.bin", "flip", "contents changed since prepare"),   # same size: only the CRC-32 sees it
    ("tokens.idx", "flip", None),                                # corrupt offsets or CRC-32, either names the file
])
def test_damaged_shard_file_is_named(shard, tmp_path, name, damage, expect):
    d = _copy(shard, tmp_path)
    f = d / name
    if damage == "truncate":
        os.truncate(f, f.stat().st_size - 6)
    else:
        _flip(f, f.stat().st_size // 2 + 1)
    with pytest.raises(ValueError, match=expect) as e:
        verify_shard(d)
    assert str(f) in str(e.value)


def test_tokenizer_fingerprint_mismatch_names_meta_json(shard, tmp_path):
    d = _copy(shard, tmp_path)
    fp = open_shard(d).fingerprint
    with pytest.raises(ValueError, match="another tokenizer") as e:
        verify_shard(d, expected_fingerprint="0" * 64)
    assert str(d / "meta.json") in str(e.value)
    assert verify_shard(d, expected_fingerprint=fp)


def test_failed_prepare_leaves_no_output_directory(tmp_path, hf_tokenizer_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    out = tmp_path / "new" / "shard"
    p = subprocess.run([sys.executable, "-m", "prism_fast.data", "prepare", "--input", str(bad), "--tokenizer",
                        str(hf_tokenizer_dir), "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env=_faults._runs.env())
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ") and "Traceback" not in p.stderr
    assert not (tmp_path / "new").exists(), "a failed prepare must not leave (empty) directories behind"


def _custom(shard_dir) -> str:
    return "--data.sources=" + json.dumps([{"path": str(shard_dir), "weight": 1.0, "domain": "general"}])


@pytest.mark.slow
def test_truncated_shard_refused_at_start_on_two_ranks(shard, tmp_path, base):
    """Under the launcher (torchrun with one-line failures): one `error:` line from rank 0, exit 2, no step run."""
    d = _copy(shard, tmp_path)
    os.truncate(d / "tokens.bin", 1000)
    args = base + [f"--train.run_dir={tmp_path / 'run'}", "--data.mixture=custom", _custom(d)]
    cmd = [sys.executable, "-m", "prism_fast.launch", "--standalone", "--nproc_per_node=2", "-m",
           "prism_fast.midtrain", "--recipe", "tiny", *args]
    p = subprocess.run(cmd, cwd=_faults._runs.ROOT, env=_faults._runs.env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    errs = _faults.error_lines(p.stderr)
    assert len(errs) == 1 and str(d / "tokens.bin") in errs[0] and "truncated" in errs[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or _faults.logged_steps(tmp_path / "run") == 0
    _faults.record("Truncated tokens.bin (2 ranks)", True, "nothing: refused at start, one line naming the file",
                   None)


@pytest.mark.slow
def test_fingerprint_mismatch_refused_at_start(shard, tmp_path, base):
    d = _copy(shard, tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["tokenizer"]["fingerprint"] = "f" * 64
    (d / "meta.json").write_text(json.dumps(meta))
    p = _faults.run(None, base + [f"--train.run_dir={tmp_path / 'run'}", "--data.mixture=custom", _custom(d)],
                    check=False)
    assert p.returncode == 2
    errs = _faults.error_lines(p.stderr)
    assert len(errs) == 1 and str(d / "meta.json") in errs[0] and "another tokenizer" in errs[0], p.stderr[-2000:]
    _faults.record("meta.json tokenizer fingerprint mismatch", True, "nothing: refused at start", None)


@pytest.mark.slow
def test_config_error_under_torchrun_is_one_line_from_rank_0(tmp_path):
    """Plain torchrun: one `error:` line (rank 0) and no worker traceback; torchrun then adds its own summary."""
    cmd = _faults._runs.cmd(2, ["--train.steps=abc"])
    p = subprocess.run(cmd, cwd=_faults._runs.ROOT, env=_faults._runs.env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    assert _faults.error_lines(p.stderr) == ["error: --train.steps: expected int, got 'abc'"], p.stderr[-3000:]
    assert "[rank0]:" not in p.stderr and "[rank1]:" not in p.stderr
    launched = subprocess.run([sys.executable, "-m", "prism_fast.launch", *cmd[3:]], cwd=_faults._runs.ROOT,
                              env=_faults._runs.env(), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 2 and launched.stderr.strip().splitlines() == \
        ["error: --train.steps: expected int, got 'abc'"], launched.stderr[-3000:]
