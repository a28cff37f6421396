"""Linear CKA identities and agreement with the textbook O(n^2) HSIC formulation."""
import math

import pytest
import torch

from prism_fast.analysis.cka import bootstrap_min_cka, cka_kernel_ref, layer_cka, linear_cka


def _rand(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _orth(d, seed):
    q, _ = torch.linalg.qr(_rand(d, d, seed))
    return q


# (n, d1, d2): n < d exercises the Gram branch, n > d the feature branch
SHAPES = [(47, 97, 31), (97, 13, 29), (200, 64, 64), (5, 3, 7)]


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_self_similarity_is_one(n, d1, d2):
    X = _rand(n, d1, 0)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_matches_kernel_reference(n, d1, d2):
    X, Y = _rand(n, d1, 1), _rand(n, d2, 2)
    Y = Y + 0.5 * X[:, :1]  # some shared structure so CKA is not ~0
    assert linear_cka(X, Y) == pytest.approx(cka_kernel_ref(X, Y), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(n, d1, d2):
    X, Y = _rand(n, d1, 3), _rand(n, d2, 4) + _rand(n, 1, 5)
    ref = linear_cka(X, Y)
    assert linear_cka(X @ _orth(d1, 6), Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X, Y @ _orth(d2, 7)) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(3.7 * X, Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X, 1e-3 * Y) == pytest.approx(ref, rel=1e-10)
    # translation of every row: removed by column centring
    assert linear_cka(X + 5.0, Y) == pytest.approx(ref, rel=1e-10)


def test_not_invariant_to_anisotropic_scaling():
    X, Y = _rand(50, 4, 8), _rand(50, 4, 9)
    Y = X + 0.3 * Y
    D = torch.diag(torch.tensor([10.0, 1.0, 1.0, 0.1], dtype=torch.float64))
    assert abs(linear_cka(X @ D, Y) - linear_cka(X, Y)) > 1e-3


def test_hand_computed_case():
    # n = 3, 1-D features: X = [1, 2, 3] -> centred [-1, 0, 1]; Y = [1, 0, 2] -> centred [0, -1, 1].
    # Y^T X = 0*-1 + -1*0 + 1*1 = 1; ||X^T X|| = 2; ||Y^T Y|| = 2  =>  CKA = 1^2 / (2 * 2) = 0.25
    X = torch.tensor([[1.0], [2.0], [3.0]])
    Y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(X, Y) == pytest.approx(0.25, abs=1e-15)
    assert cka_kernel_ref(X, Y) == pytest.approx(0.25, abs=1e-15)
    # 2-D case: column means (0.5, 0.5) -> Xc = +-0.5 entries, Xc^T Xc = I_2 (||.||_F = sqrt 2);
    # y = first column: y^T Xc = [1, 0], y^T y = 1  =>  CKA = 1 / (sqrt(2) * 1)
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    assert linear_cka(X, X[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    assert cka_kernel_ref(X, X[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-15)


def test_float32_inputs_computed_in_float64():
    X = _rand(97, 33, 10).float()
    Y = (X @ _orth(33, 11).float()) * 2.0
    assert linear_cka(X, Y) == pytest.approx(1.0, abs=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


def test_layer_cka_and_bootstrap():
    n, L, D = 60, 4, 16
    Ha = _rand(n * L, D, 12).reshape(n, L, D)
    Hb = Ha.clone()
    Hb[:, 2] = _rand(n, D, 13)  # layer 2 unrelated -> the minimum
    per = layer_cka(Ha, Hb)
    assert per[0] == pytest.approx(1.0) and per[3] == pytest.approx(1.0)
    assert per[2] < 0.6
    bs = bootstrap_min_cka(Ha, Hb, num_resamples=5, resample_size=30, seed=0)
    assert bs["argmin_layer"] == 2
    assert 0 < bs["min_cka_mean"] < 1 and bs["min_cka_std"] > 0
    assert bs == bootstrap_min_cka(Ha, Hb, num_resamples=5, resample_size=30, seed=0)  # seeded
    assert math.isclose(bs["layer_mean"][0], 1.0, abs_tol=1e-9)
