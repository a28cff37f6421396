"""Bundled prompt sets (schema, determinism), the stateless per-step order, the difficulty filter's rules and mixes,
and the reward stage: a verifier that hangs times out within its budget instead of stalling the step."""
from __future__ import annotations

import json
import time

import pytest
import torch

from prism_fast.rl.config import BUNDLED, PROMPT_DIR
from prism_fast.rl.filter import build_mixes, keeps, parse_rule, prompt_key
from prism_fast.rl.make_prompts import main as make_prompts
from prism_fast.rl.prompts import PromptSet, read_records


@pytest.fixture(scope="module")
def tok():
    from prism_fast.models import load_tokenizer, smollm2_hf_dir
    return load_tokenizer(smollm2_hf_dir())


def test_bundled_sets_are_valid_and_reproducible(tmp_path):
    make_prompts(["--out", str(tmp_path)])
    for name in BUNDLED:
        assert (tmp_path / f"{name}.jsonl").read_text() == (PROMPT_DIR / f"{name}.jsonl").read_text(), name
        recs = read_records(PROMPT_DIR / f"{name}.jsonl")
        assert len(recs) >= 40 and all(r["domain"] == name for r in recs)
    assert all("\\boxed{}" in r["prompt"] for r in read_records(PROMPT_DIR / "math.jsonl"))
    assert {r["reference"] for r in read_records(PROMPT_DIR / "mc.jsonl")} == set("ABCD")


def test_read_records_names_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "x", "domain": "math", "reference": "1"}\n{"prompt": "y", "domain": "bio", '
                 '"reference": "2"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: domain 'bio'; valid: math, code, mc"):
        read_records(f)


def test_order_is_a_function_of_the_step_and_partitions_ranks(tok):
    files = [PROMPT_DIR / "math.jsonl", PROMPT_DIR / "mc.jsonl"]
    ps = PromptSet(files, tok, seed=3, max_prompt_tokens=256, limit_per_file=40)
    n = len(ps)
    one = [p.index for _, p in ps.for_step(5, 8, 0, 1)]
    two = [p.index for r in range(2) for _, p in ps.for_step(5, 8, r, 2)]
    assert one == two and len(set(one)) == 8
    again = PromptSet(files, tok, seed=3, max_prompt_tokens=256, limit_per_file=40)
    assert ps.at(0).text.rstrip().endswith("assistant") and ps.at(0).token_ids == again.at(0).token_ids
    assert [p.index for _, p in again.for_step(5, 8, 0, 1)] == one
    epoch = [ps.at(i).index for i in range(n)]          # each epoch is a permutation
    assert sorted(epoch) == list(range(n))
    assert [ps.at(n + i).index for i in range(n)] != epoch


def test_filter_rules_and_mixes():
    assert parse_rule("exact:1") == ("exact", 1) and keeps("exact:1", 1) and not keeps("exact:1", 2)
    assert keeps("min:1", 5) and not keeps("min:1", 0)
    with pytest.raises(ValueError, match="valid: paper, exact:N, min:N"):
        parse_rule("atleast:1")
    recs = [{"prompt": f"m{i}", "domain": "math", "reference": str(i)} for i in range(6)] + \
           [{"prompt": f"c{i}", "domain": "mc", "reference": "A"} for i in range(4)]
    passes = [1, 1, 1, 0, 2, 0, 3, 0, 0, 16]       # math: 3 x 1/16 kept; mc: >= 1 kept (2)
    counts = {prompt_key(r): c for r, c in zip(recs, passes)}
    unbalanced, balanced = build_mixes(recs, counts, "paper")
    assert [r["prompt"] for r in unbalanced] == ["m0", "m1", "m2", "c0", "c3"]
    # balanced: every domain topped up to the largest kept domain (3) with its 0/k prompts
    assert [r["prompt"] for r in balanced] == ["m0", "m1", "m2", "c0", "c3", "c1"]


def test_hanging_verifier_times_out_without_stalling_the_step():
    """The trainer submits the batch, computes log-probs meanwhile, then waits: with a program that never ends the
    wait is bounded by the Rewarder's per-item limit (the real pool kills the worker), and the step gets a 0 reward
    with reason 'timeout' for that item and normal results for the others."""
    from prism_fast.rewards import Rewarder
    from prism_fast.rl.losses import group_advantages
    hang = "```python\nwhile True:\n    pass\n```"
    ok = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    ref = {"tests": [{"input": "1 2\n", "output": "3\n"}]}
    items = [{"domain": "code", "response": r, "reference": ref} for r in (hang, ok, ok, hang)]
    with Rewarder(num_workers=2, timeout_s=1.0, require_think=False) as rw:
        t0 = time.perf_counter()
        job = rw.submit(items)
        busy = torch.randn(256, 256) @ torch.randn(256, 256)      # the overlapped work of the step
        res = job.result()
        waited = time.perf_counter() - t0
        counters = rw.counters()
    assert busy.shape == (256, 256)
    assert [r.reason for r in res] == ["timeout", "ok", "ok", "timeout"]
    assert [r.reward for r in res] == [0.0, 1.0, 1.0, 0.0]
    assert waited < 20.0, f"the step waited {waited:.1f} s on a 1 s limit"
    assert counters["n_timeout"] == 2
    adv = group_advantages(torch.tensor([r.reward for r in res]), 4)
    assert torch.isfinite(adv).all() and adv[1] > 0 > adv[0]


@pytest.mark.slow
def test_filter_cli_counts_keeps_and_resumes(smol_slice, tmp_path):
    """The real CLI with the engine and the Rewarder: one pass count per prompt appended to the counts file; a rerun
    finds every prompt counted, loads no model and rebuilds the same mixes."""
    import subprocess
    import sys

    from tests.train._runs import ROOT, env
    src = [json.loads(x) for x in (PROMPT_DIR / "mc.jsonl").read_text().splitlines()[:3]]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in src))
    out, bal = tmp_path / "kept.jsonl", tmp_path / "balanced.jsonl"
    cmd = [sys.executable, "-m", "prism_fast.rl.filter", "--model", str(smol_slice), "--prompts", str(prompts),
           "--k", "2", "--keep", "min:0", "--out", str(out), "--balanced-out", str(bal), "--max-new-tokens", "4",
           "--batch", "2", "--no-think"]
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = [json.loads(x) for x in (tmp_path / "kept.jsonl.counts.jsonl").read_text().splitlines()]
    assert [c["key"] for c in counts] == [prompt_key(r) for r in src] and all(0 <= c["passes"] <= 2 for c in counts)
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == [r["prompt"] for r in src]  # min:0
    t0 = time.perf_counter()
    p2 = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0 and "3 prompts counted" in p2.stderr
    assert len((tmp_path / "kept.jsonl.counts.jsonl").read_text().splitlines()) == 3
    assert time.perf_counter() - t0 < 60
    p3 = subprocess.run(cmd[:-1] + ["--keep", "most:1"], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert p3.returncode == 2
    assert p3.stderr.strip() == "error: --keep 'most:1'; valid: paper, exact:N, min:N (e.g. exact:1)"
