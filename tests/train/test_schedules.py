"""LR schedules (pure functions of the step): warmup, the paper's cosine numbers, WSD, linear, exponential."""
import math

import pytest

from prism_fast.train.lr_schedules import Config


def test_paper_cosine_table16():
    s = Config(name="cosine", warmup_steps=500, min_lr_ratio=0.1).build(25_000)
    assert s(0) == pytest.approx(1 / 501) and s(499) == pytest.approx(500 / 501)
    assert s(500) == pytest.approx(1.0)
    assert s(24_999) == pytest.approx(0.1)
    mid = 500 + (24_500 - 1) / 2
    assert s(int(mid)) == pytest.approx(0.55, abs=1e-4)
    vals = [s(i) for i in range(500, 25_000, 97)]
    assert all(a >= b for a, b in zip(vals, vals[1:])) and min(vals) >= 0.1


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd(shape):
    s = Config(name="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.05).build(110)
    assert s(9) == pytest.approx(10 / 11)
    assert all(s(i) == 1.0 for i in range(10, 90))          # stable phase: 80 steps
    assert s(90) < 1.0 and s(109) == pytest.approx(0.05)
    dec = [s(i) for i in range(90, 110)]
    assert all(a > b for a, b in zip(dec, dec[1:]))


def test_linear_and_exponential_reach_floor():
    lin = Config(name="linear", warmup_steps=0, min_lr_ratio=0.0).build(101)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.5) and lin(100) == 0.0
    ex = Config(name="exponential", warmup_steps=100, min_lr_ratio=0.0, exp_rate=5.0).build(1100)  # long-context
    assert ex(99) == pytest.approx(100 / 101) and ex(100) == pytest.approx(1.0) and ex(1099) == pytest.approx(0.0)
    p = 0.5
    want = (math.exp(-5 * p) - math.exp(-5)) / (1 - math.exp(-5))
    assert ex(100 + round(p * 999)) == pytest.approx(want, rel=1e-2)
    assert ex(600) < lin(50), "exponential decays faster than linear early on"


def test_constant_and_errors():
    c = Config(name="constant", warmup_steps=3).build(10)
    assert [c(i) for i in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ValueError, match="use one of \\['cosine', 'wsd'"):
        Config(name="step")
    with pytest.raises(ValueError, match="lower the warmup"):
        Config(warmup_steps=10).build(10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        Config(min_lr_ratio=1.5)
