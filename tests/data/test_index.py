"""Index builders: C++ == Python twin bit for bit, exact blending, packing invariants (no token lost or duplicated)."""
import numpy as np
import pytest

from prism_fast.data.presets import percentages
from prism_fast.ops import data_index as di

needs_native = pytest.mark.skipif(not di.native_available(), reason="prism_fast._native not built")


def _random_lens(rng, n, hi):
    return rng.integers(1, hi, size=n).astype(np.int64)


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_native_equals_python(seed):
    rng = np.random.default_rng(seed)
    w = rng.random(int(rng.integers(1, 17))) ** int(rng.integers(1, 4))
    n = int(rng.choice([1, 47, 97, 1025, 4099]))
    a_src, a_smp = di.blended_index(w, n, backend="native")
    b_src, b_smp = di.blended_index_ref(w, n)
    assert a_src.dtype == b_src.dtype == np.int16 and a_smp.dtype == b_smp.dtype == np.int64
    np.testing.assert_array_equal(a_src, b_src)
    np.testing.assert_array_equal(a_smp, b_smp)

    lens = _random_lens(rng, int(rng.choice([1, 47, 97, 1025])), int(rng.choice([3, 97, 700])))
    L = int(rng.choice([2, 47, 97, 128]))
    np.testing.assert_array_equal(di.concat_index(lens, L, backend="native"), di.concat_index_ref(lens, L))
    ov = int(rng.integers(0, L))
    p1, s1 = di.bfd_index(lens, L, ov, backend="native")
    p2, s2 = di.bfd_index_ref(lens, L, ov)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)


def test_auto_dispatch_uses_native_when_built():
    w = np.array([0.3, 0.7])
    a = di.blended_index(w, 10, backend="python")
    np.testing.assert_array_equal(a[0], di.blended_index(w, 10)[0])
    with pytest.raises(ValueError, match="unknown backend"):
        di.blended_index(w, 10, backend="cuda")


@pytest.mark.parametrize("weights", [
    list(percentages("math_only").values()), list(percentages("mc").values()), list(percentages("mcs").values()),
    [1.0], [1, 1], [1e-3, 1, 1], [0.5, 0.25, 0.125, 0.0625, 0.0625], "random7", "random40",
])
def test_blended_exact_after_every_prefix(weights):
    if isinstance(weights, str):
        k = int(weights[6:])
        weights = np.random.default_rng(k).random(k) ** 3
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n = 20_000
    src, smp = di.blended_index(w, n)
    onehot = np.zeros((n, len(w)))
    onehot[np.arange(n), src] = 1
    counts = np.cumsum(onehot, axis=0)
    err = np.abs(counts - w * np.arange(1, n + 1)[:, None])
    bound = 1 - 1 / (2 * len(w) - 2) if len(w) > 1 else 0
    assert err.max() <= bound + 1e-9, f"max |count - w n| = {err.max()} > {bound}"
    # source_sample numbers each source's samples 0, 1, 2, ... in order
    for j in range(len(w)):
        np.testing.assert_array_equal(smp[src == j], np.arange((src == j).sum()))


def test_blended_prefix_and_determinism():
    w = list(percentages("mcs").values())
    a = di.blended_index(w, 5000)
    b = di.blended_index(w, 1234)
    np.testing.assert_array_equal(a[0][:1234], b[0])
    np.testing.assert_array_equal(di.blended_index(w, 5000)[0], a[0])
    with pytest.raises(ValueError, match="non-negative"):
        di.blended_index([1.0, -1.0], 3)


@pytest.mark.parametrize("L", [1, 7, 97, 1025])
def test_concat_index_rows_cover_stream(L):
    lens = _random_lens(np.random.default_rng(L), 97, 300)
    starts = di.concat_index(lens, L)
    assert len(starts) == lens.sum() // L + 1
    cum = np.concatenate([[0], np.cumsum(lens)])
    flat = cum[starts[:, 0]] + starts[:, 1]  # absolute stream position of each row start
    np.testing.assert_array_equal(flat, np.arange(len(starts)) * L)
    assert np.all(starts[:, 1] < np.append(lens, 1)[starts[:, 0]])  # offsets inside their document


@pytest.mark.parametrize("L,overlap", [(16, 0), (16, 5), (97, 31), (128, 127)])
def test_bfd_index_invariants(L, overlap):
    rng = np.random.default_rng(L + overlap)
    lens = _random_lens(rng, 300, 3 * L)
    bin_ptr, segs = di.bfd_index(lens, L, overlap)
    sizes = np.add.reduceat(segs[:, 2], bin_ptr[:-1]) if len(segs) else np.zeros(0)
    assert np.all(sizes <= L) and np.all(sizes > 0)
    for d, n in enumerate(lens):
        ch = segs[segs[:, 0] == d]
        ch = ch[np.argsort(ch[:, 1])]
        assert ch[0, 1] == 0 and ch[-1, 1] + ch[-1, 2] == n  # starts at 0, ends at the document end
        if n <= L:
            assert len(ch) == 1
        else:
            assert np.all(ch[:, 2] <= L)
            assert np.all(ch[:-1, 2] == L)  # every chunk but the last is full
            np.testing.assert_array_equal(np.diff(ch[:, 1]), L - overlap)
            assert np.all(ch[1:, 1] <= ch[:-1, 1] + ch[:-1, 2])  # consecutive chunks overlap or touch
    # best fit: no later-opened bin could have taken a chunk that opened a new bin (bins only open when needed)
    first_len = {}
    for b in range(len(bin_ptr) - 1):
        first_len[b] = segs[bin_ptr[b], 2]
    assert list(first_len.values()) == sorted(first_len.values(), reverse=True)


def test_bfd_best_fit_small_example():
    # Items 6, 5, 4, 3, 2 into bins of 10: 6 -> A (4 free), 5 -> B (5 free), 4 -> A (best fit: 0 free),
    # 3 -> B (2 free), 2 -> B (0 free).
    bin_ptr, segs = di.bfd_index_ref(np.array([3, 6, 2, 5, 4]), 10)
    bins = [segs[bin_ptr[b]:bin_ptr[b + 1], 0].tolist() for b in range(len(bin_ptr) - 1)]
    assert bins == [[1, 4], [3, 0, 2]]
