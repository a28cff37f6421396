"""The fused loss under FSDP2: a real 2-rank torchrun + gloo job on the tiny Granite model with tied embeddings.

How the trainer gets a gathered lm_head weight: the model computes its loss INSIDE forward
(CausalLM.forward(labels=...) calls fused_linear_cross_entropy), and the root FSDP unit owns the embedding / tied
head, so FSDP2's root pre-forward hook has all-gathered it into a plain tensor by then; backward reduce-scatters
the fp32 dW the op returns. Checked here: loss and every sharded gradient (full_tensor()) equal an unsharded
single-process reference built from fused_linear_cross_entropy_ref, and a DTensor weight passed outside forward
is rejected with a ValueError that says what to do.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _worker(out_path: str) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from prism_fast.distributed.fsdp import apply_fsdp, disable_gradient_division
    from prism_fast.models import build_model, tiny_config
    from prism_fast.ops import fused_linear_cross_entropy, fused_linear_cross_entropy_ref

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = tiny_config("granite", tie_word_embeddings=True, vocab_size=1031)
    model = build_model(cfg)
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(0, cfg.vocab_size, (world, 2, 17), generator=gen)         # every rank's batch
    labels = torch.roll(ids, -1, dims=2)
    labels[..., -1] = -100
    labels[0, 0, 3:6] = -100
    n_global = (labels != -100).sum()

    # Reference: one process, whole global batch, unfused reference loss (sum / global valid tokens).
    h = ref.forward_hidden(ids.reshape(world * 2, 17))
    loss_ref = fused_linear_cross_entropy_ref(h.reshape(-1, h.shape[-1]), ref.lm_head.weight, labels.reshape(-1),
                                              reduction="sum", logit_scale=1.0 / cfg.logits_scaling) / n_global
    loss_ref.backward()

    mesh = init_device_mesh("cpu", (world,))
    apply_fsdp(model, mesh, param_dtype=torch.float32)
    summed = disable_gradient_division(model)
    loss = model(ids[rank], labels=labels[rank], loss_reduction="sum") / n_global
    (loss if summed else loss * world).backward()
    loss_all = loss.detach().clone()
    dist.all_reduce(loss_all)

    res = {"loss": loss_all.item(), "loss_ref": loss_ref.item(), "grad_err": {}, "n_params": 0}
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g = p.grad.full_tensor()
        r = ref_params[name].grad
        res["grad_err"][name] = ((g - r).abs().max() / r.abs().max().clamp(min=1e-12)).item()
        res["n_params"] += 1

    # Outside forward the weight is a sharded DTensor: the op must refuse it with the fix in the message.
    try:
        fused_linear_cross_entropy(torch.randn(3, cfg.hidden_size), model.lm_head.weight, torch.zeros(3).long())
        res["dtensor_error"] = None
    except ValueError as e:
        res["dtensor_error"] = str(e)
    if rank == 0:
        Path(out_path).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_two_ranks_gloo_tied_head(tmp_path):
    out = tmp_path / "res.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and out.exists(), p.stdout[-2000:] + p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert abs(r["loss"] - r["loss_ref"]) < 1e-5 * abs(r["loss_ref"]), r
    assert r["n_params"] > 5
    bad = {k: v for k, v in r["grad_err"].items() if v > 1e-4}
    assert not bad, bad
    assert r["dtensor_error"] and "DTensor" in r["dtensor_error"] and "full_tensor" in r["dtensor_error"]


if __name__ == "__main__":
    _worker(sys.argv[1])
