"""fused_linear_logprobs: torch (chunked) and triton (interpreter) backends vs the unchunked reference.

Gradients flow through both outputs with independent per-token upstream weights (as an RL loss does). Bounds are
checked on rows that stress them: all-negative logits (logp <= 0) and uniform rows (entropy exactly log V).
"""
import math

import pytest
import torch

from prism_fast.ops import fused_linear_logprobs, fused_linear_logprobs_ref
from prism_fast.ops._lm_head_chunks import MAX_CHUNK_ROWS, TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES, chunk_rows
from tests.ops.test_fused_linear_cross_entropy import BACKENDS, assert_close_verbose, assert_within_budget


def make_inputs(n, d, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    weight = (torch.randn(v, d, generator=g) * d ** -0.5 * 3).to(dtype)
    tokens = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, tokens


def run(fn, hidden, weight, tokens, g_lp, g_ent, **kw):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    out = fn(h, w, tokens, **kw)
    logp, ent = out if isinstance(out, tuple) else (out, None)
    obj = (logp.float() * g_lp).sum() + (0 if ent is None else (ent.float() * g_ent).sum())
    obj.backward()
    return logp.detach(), (None if ent is None else ent.detach()), h.grad, w.grad


def _plain_half(h, w, y, *, temperature=1.0, return_entropy=False):
    """Unfused fp16 baseline: logits in fp16, log_softmax on their fp32 upcast."""
    logp_all = torch.log_softmax((h @ w.t()).float() / temperature, -1)
    logp = logp_all.gather(1, y.unsqueeze(1)).squeeze(1)
    return (logp, -(logp_all.exp() * logp_all).sum(-1)) if return_entropy else logp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("temperature,return_entropy", [(1.0, False), (0.7, True), (1.6, True)])
def test_matches_reference(backend, dtype, temperature, return_entropy):
    n, d, v = (53, 29, 4103) if temperature == 0.7 else (45, 19, 1201)
    hidden, weight, tokens = make_inputs(n, d, v, dtype, seed=n)
    g = torch.Generator().manual_seed(7)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    kw = dict(temperature=temperature, return_entropy=return_entropy)
    got = run(fused_linear_logprobs, hidden, weight, tokens, g_lp, g_ent, backend=backend, chunk_size=16, **kw)
    ref = run(fused_linear_logprobs_ref, hidden.float(), weight.float(), tokens, g_lp, g_ent, **kw)
    assert (got[0] <= 0).all()
    names = ("logp", "entropy", "d_hidden", "d_weight")
    pairs = [(nm, a, b) for nm, a, b in zip(names, got, ref) if b is not None]
    if dtype == torch.float32:
        for name, a, b in pairs:
            assert_close_verbose(name, a, b, atol=2e-5, rtol=1e-4)
    else:
        plain = run(_plain_half, hidden, weight, tokens, g_lp, g_ent, **kw)
        for (name, a, b), p in zip(pairs, [x for x in plain if x is not None]):
            assert_within_budget(name, a, p, b, 2 if name in ("logp", "entropy") else 3, floor=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounds_all_negative_and_uniform(backend):
    n, d, v = 33, 7, 1500
    g = torch.Generator().manual_seed(5)
    hidden = torch.rand(n, d, generator=g) + 0.5
    weight = -(torch.rand(v, d, generator=g) * 4 + 1.0)                       # logits in [-35, -3.5]
    tokens = torch.randint(0, v, (n,), generator=g)
    logp, ent = fused_linear_logprobs(hidden, weight, tokens, temperature=0.3, return_entropy=True,
                                      backend=backend, chunk_size=16)
    ref_lp, ref_ent = fused_linear_logprobs_ref(hidden, weight, tokens, temperature=0.3, return_entropy=True)
    assert (logp <= 0).all() and (ent >= 0).all() and (ent <= math.log(v)).all()
    assert_close_verbose("logp", logp, ref_lp, 1e-4, 1e-5)
    assert_close_verbose("entropy", ent, ref_ent, 1e-5, 1e-4)
    # Uniform rows (all logits equal): logp = -log V and entropy = log V, the upper bound itself.
    weight_u = torch.full((v, d), -2.0)
    logp, ent = fused_linear_logprobs(hidden, weight_u, tokens, return_entropy=True, backend=backend,
                                      chunk_size=16)
    assert (ent <= math.log(v)).all() and (ent >= 0).all() and (logp <= 0).all()
    assert_close_verbose("uniform entropy", ent, torch.full_like(ent, math.log(v)), 1e-5, 1e-6)
    assert_close_verbose("uniform logp", logp, torch.full_like(logp, -math.log(v)), 1e-5, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_single_output_grad(backend):
    """no_grad builds no graph; a loss on logp alone (entropy unused) gets the right gradient."""
    hidden, weight, tokens = make_inputs(29, 11, 1100, torch.float32, seed=2)
    with torch.no_grad():
        lp = fused_linear_logprobs(hidden.requires_grad_(True), weight, tokens, backend=backend, chunk_size=8)
    assert not lp.requires_grad
    hidden.requires_grad_(False)
    g_lp = torch.randn(29, generator=torch.Generator().manual_seed(0))
    got = run(lambda h, w, y: fused_linear_logprobs(h, w, y, return_entropy=True, backend=backend,
                                                    chunk_size=8)[0], hidden, weight, tokens, g_lp, None)
    ref = run(fused_linear_logprobs_ref, hidden, weight, tokens, g_lp, None)
    for name, a, b in zip(("logp", "d_hidden", "d_weight"), got[:1] + got[2:], ref[:1] + ref[2:]):
        assert_close_verbose(name, a, b, 2e-5, 1e-4)


def test_long_rows_torch_and_grid_bound():
    """N = 65,537 tokens (RL rows of 64k+): the chunked backend handles them; launch grids stay < 65,535.

    The Triton launch grid is one program per chunk row, and chunk rows are capped by MAX_CHUNK_ROWS whatever
    the vocabulary; the interpreter is too slow for 65k programs, tests/gpu runs the Triton case for real.
    """
    n, d, v = 65537, 8, 96
    hidden, weight, tokens = make_inputs(n, d, v, torch.float32, seed=9)
    logp, ent = fused_linear_logprobs(hidden, weight, tokens, return_entropy=True, backend="torch")
    ref_lp, ref_ent = fused_linear_logprobs_ref(hidden, weight, tokens, return_entropy=True)
    assert_close_verbose("logp", logp, ref_lp, 1e-5, 1e-5)
    assert_close_verbose("entropy", ent, ref_ent, 1e-5, 1e-5)
    for vocab in (2, 96, 49152, 262144):
        for bytes_per, budget in ((TORCH_BYTES_PER_LOGIT, TORCH_CHUNK_BYTES), (2, 1 << 40)):
            assert 1 <= chunk_rows(10 ** 6, vocab, bytes_per, budget) <= MAX_CHUNK_ROWS < 65535


def test_errors():
    hidden, weight, tokens = make_inputs(4, 3, 10, torch.float32)
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_logprobs(hidden, weight, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        fused_linear_logprobs(hidden, weight.t(), tokens)
    with pytest.raises(ValueError, match="unknown backend"):
        fused_linear_logprobs(hidden, weight, tokens, backend="liger")
    with pytest.raises(RuntimeError):
        fused_linear_logprobs(hidden, weight, torch.full_like(tokens, -1), backend="triton")
