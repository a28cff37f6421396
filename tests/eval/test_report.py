"""results.md / compare on results written by the real collect path (scores from a samples store)."""
import json

import pytest

from prism_fast.entry import UserError
from prism_fast.eval.report import compare_markdown, results_markdown, write_reports
from prism_fast.eval.runner import answer_part, problem_seed


def _results(model, math500, gpqa, standin=False):
    b = lambda v, g: {"n_problems": 2, "n_samples": 4, "avg@n": v, "pass@1": v, "pass@2": v, "pass@4": v,  # noqa
                      "mean_score": v, "group": g, "standin": standin, "in_aggregates": True}
    from prism_fast.eval.metrics import aggregate
    agg = aggregate({"math500": math500, "gpqa_diamond": gpqa}, {"math500": "math", "gpqa_diamond": "gpqa"})
    return {"model": model, "model_arg": model, "seed": 0, "unit": "percent", "headline_metric": "avg@n",
            "stand_ins": ["math500"] if standin else [], "benchmarks": {"math500": b(math500, "math"),
                                                                        "gpqa_diamond": b(gpqa, "gpqa")}, **agg}


def test_compare_table_has_deltas_and_paper_numbers(tmp_path):
    for name, m, g in (("base", 10.0, 20.0), ("mt", 30.0, 25.0), ("rl", 45.5, 30.0)):
        (tmp_path / name).mkdir()
        write_reports(tmp_path / name, _results("/ckpt/granite-3.3-8b-base", m, g))
    md = compare_markdown([tmp_path / "base", tmp_path / "mt", tmp_path / "rl"])
    assert "| metric | base | mt | rl |" in md
    assert "| math500 avg@n | 10.00 | 30.00 (+20.00) | 45.50 (+35.50) |" in md
    assert "| **avg_paper** (mean of domains) | 15.00 | 27.50 (+12.50) | 37.75 (+22.75) |" in md
    assert "Paper (Granite-3.3 8B) AVG base -> +MT -> +MT+RL: 11.19 -> 29.48 -> 41.76" in md
    assert "not comparable with the paper's AVG" in md                   # only 2 of 3 domains present
    assert (tmp_path / "base" / "results.md").read_text().startswith("# Evaluation of /ckpt/granite-3.3-8b-base")
    with pytest.raises(UserError, match="has no results.json"):
        compare_markdown([tmp_path / "nothing"])


def test_results_markdown_labels_standins_and_aggregates():
    md = results_markdown(_results("smol", 10.0, 20.0, standin=True))
    assert "**Stand-ins**" in md and "math500 (stand-in)" in md
    assert "| avg_paper | 15.00 | domains gpqa, math" in md and "| avg_six | 15.00 | 2 benchmarks" in md
    json.dumps(_results("smol", 1.0, 2.0))


def test_seeds_and_answer_part():
    assert problem_seed(0, "math500", "a") == problem_seed(0, "math500", "a")
    assert len({problem_seed(s, b, p) for s in (0, 1) for b in ("x", "y") for p in ("a", "b")}) == 8
    assert 0 <= problem_seed(0, "x", "y") < 2**63
    assert answer_part("<think>\\boxed{1}</think> so \\boxed{2}") == " so \\boxed{2}"
    assert answer_part("no thinking \\boxed{3}") == "no thinking \\boxed{3}"
