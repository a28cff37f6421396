"""A training step's micro steps (packed forward + fused loss + backward, dense and hybrid, the default "auto"
CUDA kernels) make zero device-to-host syncs when cu_seqlens comes from the host, as the trainer passes it
(torch.cuda.set_sync_debug_mode("error") turns any sync into an error). Skipped without CUDA."""
import pytest
import torch

from prism_fast.models import build_model, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("model_type", ["llama", "nemotron_h"])
def test_micro_steps_make_no_device_to_host_sync(model_type):
    torch.manual_seed(0)
    cfg = tiny_config(model_type)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    model.init_weights()
    assert model.kernels.device == "cuda"
    micro = []
    for lens in ([100, 1, 155], [256], [17, 200, 39]):
        ids = torch.randint(0, cfg.vocab_size, (1, sum(lens)), pin_memory=True)
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, pin_memory=True)
        micro.append((ids.cuda(non_blocking=True), torch.roll(ids, -1, 1).cuda(non_blocking=True), cu))

    def step():
        for ids, labels, cu in micro:
            loss = model(ids, cu_seqlens=cu, labels=labels, loss_reduction="sum") / 1000.0
            loss.backward()

    step()                               # warm-up: Triton autotuning and one-time capability probes may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
