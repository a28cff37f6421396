"""AdamW wrapper: clipping folded into the fused kernel's grad_scale equals clip_grad_norm_ + AdamW."""
import pytest
import torch

from prism_fast.train import optim


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.LayerNorm(13), torch.nn.Linear(13, 3))


@pytest.mark.parametrize("grad_clip,scale", [(1.0, 50.0), (1.0, 1e-3), (0.0, 50.0)])
def test_fused_clip_matches_clip_grad_norm_then_adamw(grad_clip, scale):
    """scale 50: the clip is active; 1e-3: norm below max_norm (factor 1); grad_clip 0: clipping disabled."""
    ours_m, ref_m = _model(), _model()
    cfg = optim.Config(lr=1e-2, weight_decay=0.1, grad_clip=grad_clip)
    ours = cfg.build(ours_m)
    groups, _ = optim.param_groups(ref_m, cfg.weight_decay)
    ref = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    x = torch.randn(5, 7)
    for step in range(3):
        for m in (ours_m, ref_m):
            (m(x * (step + 1)).square().sum() * scale).backward()
        norm = ours.clip_grad_norm()
        want = torch.nn.utils.clip_grad_norm_(ref_m.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        torch.testing.assert_close(norm, want, rtol=1e-6, atol=0)
        ours.step(torch.zeros(()))
        ref.step()
        ref.zero_grad()
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in ours_m.parameters())


def test_found_inf_skips_update_and_state():
    m = _model()
    opt = optim.Config(lr=1e-2).build(m)
    before = [p.detach().clone() for p in m.parameters()]
    m(torch.randn(2, 7)).sum().backward()
    opt.clip_grad_norm()
    opt.step(torch.ones(()))
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(float(s["step"]) == 0.0 for s in opt.opt.state.values())
