"""End-to-end runs of `prism_fast.midtrain --recipe tiny` as real torchrun jobs (gloo, fp32 on CPU).

One module-scoped set of runs serves several assertions (budget: each launch costs ~10 s of startup):
  A  1 rank, 8 steps, checkpoints every 2 (the reference)
  B  2 ranks, same global batch           -> losses equal A within 1e-6
  C  1 rank resuming B's step-4 checkpoint -> 2 -> 1 resharding; losses equal A within 1e-6
  D  1 rank, SIGKILLed while writing the step-6 checkpoint, then resumed with --resume auto
                                           -> no loadable step-6; loss sequence and final weights BITWISE equal A
"""
from __future__ import annotations

import json

import pytest
import torch

from prism_fast.train.checkpoint import is_complete, list_complete, resolve_step_dir
from tests.train import _runs

pytestmark = pytest.mark.slow
STEPS = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory, hf_tokenizer_dir):
    return (tmp_path_factory.mktemp("corpus"), hf_tokenizer_dir)


def _args(run_dir, cache, *extra):
    return [f"--train.run_dir={run_dir}", f"--data.cache_dir={cache[0]}", f"--data.tokenizer={cache[1]}",
            f"--train.steps={STEPS}",
            "--checkpoint.interval=2", "--checkpoint.keep_last=0", "--data.val_batches=1", *extra]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, cache):
    d = tmp_path_factory.mktemp("A")
    _runs.run(1, _args(d, cache))
    return d


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, cache, run_a):  # after A: A prepares the corpus cache
    d = tmp_path_factory.mktemp("B")
    _runs.run(2, _args(d, cache))
    return d


def test_two_ranks_equal_one_rank(run_a, run_b):
    la, lb = _runs.losses(run_a), _runs.losses(run_b)
    assert sorted(la) == list(range(1, STEPS + 1)) and sorted(lb) == sorted(la)
    for s in la:
        assert abs(la[s] - lb[s]) <= 1e-6, (s, la[s], lb[s])
    assert la[STEPS] < la[1] - 0.1, "the loss should go down on the tiny model"
    rb = [r for r in _runs.records(run_b) if "loss" in r]
    assert all(r["world_size"] == 2 for r in rb)
    wa, wb = _runs.final_weights(run_a / "checkpoints" / f"step-{STEPS}"), \
        _runs.final_weights(run_b / "checkpoints" / f"step-{STEPS}")
    for k in wa:
        # Adam amplifies last-bit gradient differences on rarely-seen embedding rows (m/sqrt(v) with tiny v):
        # a handful of entries move by a few 1e-6 (lr 3e-3); everything else agrees to ~1e-7.
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=0, msg=k)


def test_resume_two_ranks_to_one(tmp_path, run_a, run_b, cache):
    d = tmp_path / "C"
    _runs.run(1, _args(d, cache, f"--checkpoint.resume={run_b / 'checkpoints' / 'step-4'}"))
    la, lc = _runs.losses(run_a), _runs.losses(d)
    assert sorted(lc) == list(range(5, STEPS + 1)), "the resumed run starts after step 4"
    for s in lc:
        assert abs(la[s] - lc[s]) <= 1e-6, (s, la[s], lc[s])


def test_kill9_during_checkpoint_write_then_resume_is_bitwise(tmp_path, run_a, cache):
    d = tmp_path / "D"
    # The writer pauses (test hook) after the step-6 shards are on disk but before COMPLETE; SIGKILL it there.
    proc = _runs.start(1, _args(d, cache), PRISM_CKPT_TEST_PAUSE_S=120, PRISM_CKPT_TEST_PAUSE_STEP=6)
    paused = d / "checkpoints" / "step-6.tmp" / "PAUSED"
    _runs.wait_for(paused.exists, proc, what="the step-6 checkpoint write")
    _runs.kill9(proc)
    ck = d / "checkpoints"
    assert [p.name for p in list_complete(ck)] == ["step-2", "step-4"]
    assert not is_complete(ck / "step-6.tmp") and (ck / "step-6.tmp" / ".metadata").exists()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_step_dir(ck / "step-6.tmp")
    assert resolve_step_dir(d) == ck / "step-4"

    out = _runs.run(1, _args(d, cache, "--checkpoint.resume=auto"))
    assert "resume=" in out.stdout + out.stderr
    assert not (ck / "step-6.tmp").exists(), "the interrupted write is cleaned up"
    la, ld = _runs.losses(run_a), _runs.losses(d)
    assert ld == la, "loss sequence after resume must equal the uninterrupted run bitwise"
    wa, wd = _runs.final_weights(run_a / "checkpoints" / f"step-{STEPS}"), \
        _runs.final_weights(ck / f"step-{STEPS}")
    for k in wa:
        assert torch.equal(wa[k], wd[k]), f"{k} differs after kill -9 + resume"


def test_metrics_and_run_dir(run_a):
    recs = _runs.records(run_a)
    train = [r for r in recs if "loss" in r]
    need = {"step", "loss", "domain_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mfu_formula", "step_time_s",
            "peak_mem_gib", "skipped_steps"}
    assert need <= set(train[0]), need - set(train[0])
    assert "6*N_nonembed" in train[0]["mfu_formula"]
    assert {"general", "math", "code", "science"} <= set(train[0]["domain_loss"])
    vals = [r for r in recs if "val_loss" in r]
    assert [v["step"] for v in vals] == [0, STEPS]
    assert all(x is not None and x > 0 for x in vals[-1]["val_loss"].values())
    cfg = json.loads((run_a / "config.json").read_text())
    assert cfg["train"]["steps"] == STEPS and cfg["model"]["path"] == "tiny"
    # warmup (2 steps) then cosine to 0.1 x peak
    lrs = [r["lr"] for r in train]
    assert lrs[0] < lrs[1] and lrs[-1] == pytest.approx(0.1 * 3e-3)


def test_export_loads_in_transformers_with_equal_logits(tmp_path, run_a, hf_tokenizer_dir):
    import transformers

    from prism_fast.export import main as export_main
    out = tmp_path / "hf"
    export_main(["--ckpt", str(run_a), "--out", str(out), "--dtype", "fp32"])   # run dir -> newest complete step
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    from prism_fast.models import ModelConfig, build_model
    from prism_fast.train.checkpoint import load_model_weights
    step = run_a / "checkpoints" / f"step-{STEPS}"
    ours = build_model(ModelConfig.from_hf_dict(json.loads((step / "model_config.json").read_text())))
    load_model_weights(step, ours)
    ours.tie_weights()
    ids = torch.randint(0, 49152, (2, 47), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=2e-5, rtol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)                   # the export is self-contained
    assert tok("Assistant: 2 + 2 = 4").input_ids
    bf = tmp_path / "hf_bf16"
    export_main(["--ckpt", str(step), "--out", str(bf)])
    assert json.loads((bf / "config.json").read_text())["torch_dtype"] == "bfloat16"
