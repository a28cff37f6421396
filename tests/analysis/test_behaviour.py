"""`python -m prism_fast.analyze behaviour` (paper Table 15): statistics from evaluator-format samples, NLL from the
samples' own log-probs or recomputed with the real SmolLM2 (checked against transformers on the same token ids)."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from prism_fast.analysis.behaviour import behaviour
from prism_fast.analysis.cli import main as analyze_main


def _write_eval(d, rows, model="smollm2", bench_file="bundled"):
    d.mkdir(parents=True, exist_ok=True)
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "run_config.json").write_text(json.dumps({"model": model, "benchmarks": {
        r["benchmark"]: {"file": bench_file} for r in rows}}))
    return d


def _row(bench, pid, j, correct, n, lps=None, response="x"):
    r = {"benchmark": bench, "problem_id": pid, "sample_index": j, "response": response, "correct": correct,
         "reward": correct, "reason": "test", "finish_reason": "stop", "num_tokens": n}
    if lps is not None:
        r["token_logprobs"] = lps
    return r


def test_stats_from_sample_fields_split_by_correctness(tmp_path):
    rows = [_row("a", "p0", 0, 1.0, 3, [-0.5, -0.5, -0.5]), _row("a", "p0", 1, 0.0, 5, [-2.0] * 5),
            _row("b", "p1", 0, 1.0, 10, [-1.0] * 10), _row("b", "p1", 1, 0.5, 2, [-4.0, -4.0])]
    res = behaviour([str(_write_eval(tmp_path / "rl", rows))], labels=["RL"], progress=False)
    s = res["stages"]["RL"]
    a = s["all benchmarks"]["all"]
    assert a["n"] == 4 and a["pass_rate"] == pytest.approx(2.5 / 4)
    assert a["median_tokens"] == statistics.median([3, 5, 10, 2])
    assert a["mean_nll"] == pytest.approx((1.5 + 10 + 10 + 8) / 20)           # token-weighted
    c, i = s["all benchmarks"]["correct"], s["all benchmarks"]["incorrect"]
    assert (c["n"], i["n"]) == (2, 2) and c["mean_nll"] == pytest.approx(11.5 / 13)
    assert i["mean_nll"] == pytest.approx(18 / 7) and i["pass_rate"] == pytest.approx(0.25)
    assert s["a"]["all"]["n"] == 2 and s["b"]["correct"]["median_tokens"] == 10
    assert res["nll_source"]["RL"] == "sample fields"


def test_cli_recomputes_nll_with_smollm2_equal_to_transformers(tmp_path):
    import transformers

    from prism_fast.eval.benchmarks import load_benchmark
    from prism_fast.eval.model_io import prompt_ids
    from prism_fast.models import load_tokenizer, smollm2_hf_dir
    probs = load_benchmark("math_standin")[:2]
    responses = ["The remainder is 3, so the answer is \\boxed{3}.", "I think it is 7."]
    rows = [_row("math_standin", p.id, 0, float(k == 0), 12, response=t) for k, (p, t) in
            enumerate(zip(probs, responses))]
    mt = _write_eval(tmp_path / "mt", rows)
    base = _write_eval(tmp_path / "base", [_row("math_standin", probs[0].id, 0, 0.0, 4, [-3.0] * 4)])
    out = tmp_path / "report"
    analyze_main(["behaviour", "--evals", str(base), str(mt), "--labels", "base,mt", "--models", "auto",
                  "--out", str(out), "--no-progress"])
    res = json.loads((out / "behaviour.json").read_text())
    assert (out / "behaviour.md").read_text().count("| mt |") == 2 and (out / "behaviour.png").stat().st_size > 0
    assert res["nll_source"]["base"] == "sample fields" and "recomputed" in res["nll_source"]["mt"]

    d = smollm2_hf_dir()
    tok, hf = load_tokenizer(d), transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    nll = []
    for p, t in zip(probs, responses):
        prompt, resp = prompt_ids(tok, p.prompt)[0], tok(t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = hf(torch.tensor([prompt + resp])).logits[0].float().log_softmax(-1)
        nll.append(-sum(float(lp[len(prompt) - 1 + k, r]) for k, r in enumerate(resp)) / len(resp))
    mt_stats = res["stages"]["mt"]["all benchmarks"]
    assert mt_stats["correct"]["mean_nll"] == pytest.approx(nll[0], rel=1e-4)
    assert mt_stats["incorrect"]["mean_nll"] == pytest.approx(nll[1], rel=1e-4)
    assert mt_stats["all"]["nll_coverage"] == 1.0


def test_missing_samples_is_a_clear_error(tmp_path):
    from prism_fast.entry import UserError
    with pytest.raises(UserError, match="no samples.jsonl"):
        behaviour([str(tmp_path)], progress=False)
