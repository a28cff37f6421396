"""Activation checkpointing (full / every k-th block) leaves the loss, the gradients and the state_dict names of a
real model unchanged; per-block compile keeps parameter names; FP8 fails loudly without CUDA + TE; a real run
records the resolved kernel choice."""
import pytest
import torch

from prism_fast.distributed.ac import apply_ac
from prism_fast.distributed.compile import apply_compile
from prism_fast.distributed.fp8 import apply_fp8
from prism_fast.models import build_model, tiny_config


def _loss_and_grads(model, ids, labels, cu):
    model.zero_grad(set_to_none=True)
    loss = model(ids, cu_seqlens=cu, labels=labels, loss_reduction="sum")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode, every, wrapped", [("full", 1, 4), ("every", 2, 2), ("every", 3, 2)])
def test_ac_same_loss_and_grads(mode, every, wrapped):
    torch.manual_seed(0)
    cfg = tiny_config("llama", num_hidden_layers=4)
    ref = build_model(cfg)
    ref.init_weights()
    ac = build_model(cfg)
    ac.load_state_dict(ref.state_dict())
    assert apply_ac(ac, mode, every) == wrapped
    assert list(ac.state_dict()) == list(ref.state_dict()), "checkpoint_wrapper prefixes must not leak"
    ids = torch.randint(0, cfg.vocab_size, (1, 97))
    labels = torch.roll(ids, -1, 1)
    labels[0, [40, 96]] = -100
    cu = torch.tensor([0, 41, 97], dtype=torch.int32)
    l0, g0 = _loss_and_grads(ref, ids, labels, cu)
    l1, g1 = _loss_and_grads(ac, ids, labels, cu)
    assert torch.equal(l0, l1)
    names = {n.replace("_checkpoint_wrapped_module.", ""): g for n, g in g1.items()}
    for n, g in g0.items():
        torch.testing.assert_close(names[n], g, atol=0, rtol=0, msg=n)


def test_ac_rejects_bad_mode_and_compile_keeps_names():
    m = build_model(tiny_config("llama"))
    with pytest.raises(ValueError, match="use one of"):
        apply_ac(m, "sometimes")
    names = list(m.state_dict())
    assert apply_compile(m) == len(m.blocks)
    assert list(m.state_dict()) == names


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_fp8_without_cuda_raises_with_fix():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        apply_fp8(build_model(tiny_config("llama")))


def test_compiled_blocks_fullgraph_same_loss_and_grads():
    """The CPU fast path: every block compiles as ONE graph (fullgraph=True: the packed attention is an opaque
    custom op, so the cu_seqlens host read does not break the graph), and the LM-head loss's row math runs through
    inductor. Loss and every gradient match eager in fp32 on a packed batch with ignored labels."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    cfg = tiny_config("llama", num_hidden_layers=2)
    ref = build_model(cfg)
    ref.init_weights()
    comp = build_model(cfg)
    comp.load_state_dict(ref.state_dict())
    assert apply_compile(comp, fullgraph=True) == 2
    assert comp.configure_kernels(device="cpu", compile=True).loss == "inductor"
    ids = torch.randint(0, cfg.vocab_size, (1, 61))
    labels = torch.roll(ids, -1, 1)
    labels[0, [20, 60]] = -100
    cu = torch.tensor([0, 21, 61], dtype=torch.int32)
    l0, g0 = _loss_and_grads(ref, ids, labels, cu)
    l1, g1 = _loss_and_grads(comp, ids, labels, cu)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-6)
    assert set(g1) == set(g0)
    for n, g in g0.items():
        torch.testing.assert_close(g1[n], g, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.slow
def test_midtrain_records_and_prints_the_resolved_kernels(tmp_path, hf_tokenizer_dir):
    """A real 1-rank tiny run: the kernel choice is printed at start and the run's config.json holds the resolved
    names (never "auto"); an invalid choice stops the launch at model build with one line listing what can run."""
    import json

    from tests.train import _runs
    run_dir = tmp_path / "run"
    common = [f"--data.cache_dir={tmp_path / 'corpus'}", f"--data.tokenizer={hf_tokenizer_dir}", "--train.steps=2",
              "--schedule.warmup_steps=1", "--data.val_batches=0", "--checkpoint.save_final=false"]
    bad = _runs.run(None, [f"--train.run_dir={tmp_path / 'bad'}", "--kernels.attention=flash_attn", *common],
                    check=False)
    assert bad.returncode == 2
    assert "error: kernels.attention='flash_attn' cannot run on cpu" in bad.stdout + bad.stderr
    p = _runs.run(None, [f"--train.run_dir={run_dir}", "--kernels.loss=torch", *common])
    saved = json.loads((run_dir / "config.json").read_text())["kernels"]
    assert saved["loss"] == "torch" and saved["attention"] == "torch" and "auto" not in saved.values()
    assert "kernels (cpu, float32): attention=torch" in p.stdout + p.stderr
