"""Unit tests of checkpoint integrity (no training job): the COMPLETE manifest, verification depths, legacy
markers, keep-last-K that never prunes for a damaged newer checkpoint, resume=auto's fallback, the verify CLI,
and run_entry's mapping of faults to one line + exit status."""
from __future__ import annotations

import os

import pytest

from prism_fast.checkpoint import integrity
from prism_fast.checkpoint.__main__ import main as verify_main
from prism_fast.entry import UserError, agree_on_error, rank0_result, run_entry
from prism_fast.train.checkpoint import Checkpointer, Config, list_complete


def _fake_checkpoint(ckpt_dir, step, *, legacy=False):
    d = ckpt_dir / f"step-{step}"
    d.mkdir(parents=True)
    for name, n in ((".metadata", 100), ("__0_0.distcp", 5000 + step), ("train_state.pt", 64)):
        (d / name).write_bytes(os.urandom(n))
    files = integrity.describe(d, integrity.content_files(d))
    (d / integrity.MARKER).write_bytes(b"step %d\n" % step if legacy else integrity.manifest_bytes(step, files))
    return d


def test_manifest_records_every_file_and_verifies(tmp_path):
    d = _fake_checkpoint(tmp_path, 2)
    files = integrity.read_manifest(d)
    assert sorted(files) == [".metadata", "__0_0.distcp", "train_state.pt"]
    assert files["__0_0.distcp"]["size"] == 5002 and len(files["__0_0.distcp"]["crc32"]) == 8
    assert integrity.verify(d) == ("intact", [])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damage_is_named_and_only_deep_checks_see_flips(tmp_path, damage):
    d = _fake_checkpoint(tmp_path, 4)
    f = d / "__0_0.distcp"
    if damage == "truncate":
        os.truncate(f, 10)
    elif damage == "delete":
        f.unlink()
    else:
        data = bytearray(f.read_bytes())
        data[7] ^= 1
        f.write_bytes(bytes(data))
    status, problems = integrity.verify(d)
    assert status == "damaged" and len(problems) == 1 and problems[0].startswith(str(f))
    assert integrity.verify(d, deep=False)[0] == ("intact" if damage == "flip" else "damaged")


def test_legacy_marker_is_loadable_but_unverified(tmp_path):
    d = _fake_checkpoint(tmp_path, 2, legacy=True)
    assert integrity.read_manifest(d) is None and integrity.verify(d) == ("legacy", [])


def test_keep_last_never_prunes_for_a_damaged_newer_checkpoint(tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    for s in (2, 4, 6):
        _fake_checkpoint(ck, s)
    os.truncate(ck / "step-6" / "__0_0.distcp", 1)  # newest damaged
    c = Checkpointer(Config(keep_last=1), tmp_path / "run", rank=0, world_size=1, model_hf_config=None)
    c._prune()
    assert [p.name for p in list_complete(ck)] == ["step-4", "step-6"], "step-4 is the newest intact: kept"
    _fake_checkpoint(ck, 8)
    c._prune()
    assert [p.name for p in list_complete(ck)] == ["step-8"]


def test_resume_auto_falls_back_to_the_newest_intact(tmp_path, caplog):
    ck = tmp_path / "run" / "checkpoints"
    for s in (2, 4, 6):
        _fake_checkpoint(ck, s)
    bad = ck / "step-6" / "train_state.pt"
    bad.write_bytes(b"x" * bad.stat().st_size)  # same size, other bytes
    c = Checkpointer(Config(resume="auto"), tmp_path / "run", rank=0, world_size=1, model_hf_config=None)
    with caplog.at_level("WARNING"):
        assert c.find_resume() == ck / "step-4"
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(bad) in warnings[0]
    explicit = Checkpointer(Config(resume=str(ck / "step-6")), tmp_path / "run", rank=0, world_size=1,
                            model_hf_config=None)
    with pytest.raises(UserError, match="is damaged.*train_state.pt"):
        explicit.find_resume()
    assert Checkpointer(Config(resume=str(ck / "step-2")), tmp_path / "run", rank=0, world_size=1,
                        model_hf_config=None).find_resume() == ck / "step-2"


def test_verify_cli_lists_each_checkpoint(tmp_path, capsys):
    ck = tmp_path / "checkpoints"
    _fake_checkpoint(ck, 2)
    _fake_checkpoint(ck, 4, legacy=True)
    _fake_checkpoint(ck, 6)
    (ck / "step-8.tmp").mkdir()
    assert verify_main(["verify", str(tmp_path)]) == 0
    os.truncate(ck / "step-6" / ".metadata", 3)
    assert verify_main(["verify", str(tmp_path)]) == 1
    rows = [ln.split()[:2] for ln in capsys.readouterr().out.splitlines()[-4:]]
    assert [(os.path.basename(p), s) for p, s in rows] == [("step-2", "intact"), ("step-4", "legacy"),
                                                           ("step-6", "damaged"), ("step-8.tmp", "incomplete")]
    assert run_entry(verify_main, ["verify", str(tmp_path / "nothing")]) == 2


def test_run_entry_maps_faults_to_one_line(capsys):
    def bad_config(argv):
        raise UserError("--x.y: expected int")

    def lost_peer(argv):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234")

    def bug(argv):
        raise KeyError("a real bug")

    assert run_entry(bad_config, []) == 2
    assert capsys.readouterr().err == "error: --x.y: expected int\n"
    assert run_entry(lost_peer, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: rank 0: a collective failed (") and err.count("\n") == 1
    with pytest.raises(KeyError):
        run_entry(bug, [])
    with pytest.raises(UserError):
        run_entry(bad_config, ["--debug"])


def test_agreement_helpers_without_a_process_group():
    agree_on_error(None)
    with pytest.raises(UserError, match="disk"):
        agree_on_error(UserError("disk"))
    assert rank0_result(lambda: 41 + 1) == 42
