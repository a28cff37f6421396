"""pass@k against brute-force enumeration and the closed form; avg@n; aggregates against SPEC section 4."""
import itertools
import math

import pytest

from prism_fast.eval.metrics import aggregate, default_ks, pass_at_k, summarize


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_equals_enumeration_and_closed_form(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            closed = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_checks_inputs():
    assert pass_at_k(64, 1, 1) == pytest.approx(1 / 64)
    assert pass_at_k(200, 3, 50) == pytest.approx(1 - math.comb(197, 50) / math.comb(200, 50), rel=1e-10)
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            pass_at_k(*bad)


def test_summarize_avg_at_n_is_pass_at_1_and_partial_code_credit_is_separate():
    s = summarize([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0.5]])
    assert s["n_problems"] == 3 and s["n_samples"] == 4
    assert s["avg@n"] == pytest.approx(100 * (2 / 4 + 0 + 3 / 4) / 3)
    assert s["pass@1"] == pytest.approx(s["avg@n"])
    assert s["pass@4"] == pytest.approx(100 * 2 / 3)
    assert s["mean_score"] == pytest.approx(100 * (0.5 + 0 + 3.5 / 4) / 3)
    assert set(k for k in s if k.startswith("pass@")) == {"pass@1", "pass@2", "pass@4"}
    assert default_ks(3) == [1, 2, 3] and default_ks(64)[-1] == 64
    with pytest.raises(ValueError, match="same, nonzero number of samples"):
        summarize([[1, 0], [1]])


def test_aggregates_follow_spec_definition():
    scores = {"aime24": 10.0, "aime25": 20.0, "math500": 60.0, "livecodebench": 15.0, "codeforces": 5.0,
              "gpqa_diamond": 40.0}
    groups = {"aime24": "math", "aime25": "math", "math500": "math", "livecodebench": "code", "codeforces": "code",
              "gpqa_diamond": "gpqa"}
    a = aggregate(scores, groups)
    math_, code = (10 + 20 + 60) / 3, (15 + 5) / 2
    assert a["domains"]["math"]["value"] == pytest.approx(math_)
    assert a["domains"]["code"] == {"value": pytest.approx(code), "benchmarks": ["livecodebench", "codeforces"]}
    assert a["avg_paper"]["value"] == pytest.approx((math_ + code + 40) / 3)        # SPEC: mean(Code, Math, GPQA)
    assert a["avg_six"]["value"] == pytest.approx(sum(scores.values()) / 6)           # project page: six-way mean
    assert a["avg_paper"]["value"] != pytest.approx(a["avg_six"]["value"])
    part = aggregate({"math500": 50.0, "gpqa_diamond": 30.0}, groups)                 # only what is present
    assert part["avg_paper"]["value"] == 40.0 and part["avg_paper"]["domains"] == ["gpqa", "math"]
    assert aggregate({}, {})["avg_paper"]["value"] is None
