"""Rewarder / score(): the worker pool under stuck and dying workers, submit-then-collect, penalties, counters,
the "all failed" report, and bad input (a malformed item raises naming it; a malformed reference scores 0)."""
import logging
import os
import signal
import time

import pytest

from prism_fast.rewards import Rewarder, RewardItem, score

NESTED = "\\boxed{" + "(" * 31 + "1" + ")" * 31 + "}"        # ~8 s of pure-Python sympy work when unbounded


def _math(response, reference="2", **kw):
    return {"domain": "math", "response": response, "reference": reference, **kw}


def test_score_end_to_end_with_the_think_gate():
    items = [
        _math("<think>1+1</think> The answer is $\\boxed{2}$."),
        _math("<think>1+1 = \\boxed{2}</think> I forgot."),          # correct only inside the reasoning
        _math("\\boxed{2}"),                                          # no <think>
        RewardItem("mc", "<think>hmm</think> Answer: (B)", "B"),
        {"domain": "code", "response": "<think>easy</think> no code, sorry", "reference": {"tests": [
            {"input": "", "output": "1"}]}},
    ]
    res = score(items, timeout_s=5, num_workers=2)
    assert [(r.reason, r.reward, r.format_ok) for r in res] == [
        ("ok", 1.0, True), ("no_answer", 0.0, True), ("format", 0.0, False), ("ok", 1.0, True),
        ("no_answer", 0.0, True)]
    assert score([]) == []


def test_stuck_worker_is_killed_and_replaced_batch_on_time():
    """A worker that stops responding (SIGSTOP: like sympy stuck inside C, deaf to its own timer) is SIGKILLed
    by the parent at the hard limit (1.1 * 1 s + 1 s); its item ends as "timeout", the others finish on time."""
    with Rewarder(num_workers=2, timeout_s=1.0, require_think=False) as r:
        os.kill(r.worker_pids()[0], signal.SIGSTOP)
        t0 = time.monotonic()
        res = r.score([_math(f"\\boxed{{{i}}}", str(i)) for i in range(20)])
        elapsed = time.monotonic() - t0
        killed = [x for x in res if x.reason == "timeout"]
        assert len(killed) == 1 and "killed" in killed[0].detail, res
        assert sum(x.reason == "ok" for x in res) == 19
        assert elapsed < 2.1 + 6, elapsed           # without the kill the batch would never end
        c = r.counters()
        assert c["worker_restarts"] == 1 and c["n_timeout"] == 1 and c["all_failed_batches"] == 0
        # the replacement works
        assert [x.reason for x in r.score([_math("\\boxed{2}")] * 4)] == ["ok"] * 4


def test_worker_death_is_a_crash_and_an_all_failed_batch_is_reported(caplog):
    with Rewarder(num_workers=1, timeout_s=5.0, require_think=False) as r:
        job = r.submit([_math(NESTED, "1")])
        time.sleep(0.5)
        os.kill(r.worker_pids()[0], signal.SIGKILL)                # e.g. the OOM killer
        with caplog.at_level(logging.WARNING, logger="prism_fast.rewards.api"):
            [res] = job.result(timeout=10)
        assert res.reason == "crash" and "died" in res.detail
        assert job.all_failed
        assert "every item timed out or crashed" in caplog.text
        c = r.counters(reset=True)
        assert c["n_crash"] == 1 and c["all_failed_batches"] == 1 and c["reasons"] == {"crash": 1}
        assert r.counters()["n_items"] == 0                          # reset
        # a batch of plain wrong answers is NOT an all-failed batch
        job = r.submit([_math("\\boxed{3}")])
        assert job.result()[0].reason == "wrong" and not job.all_failed
        assert r.counters()["all_failed_batches"] == 0


def test_submit_returns_at_once_and_result_collects_later():
    with Rewarder(num_workers=2, timeout_s=1.0, require_think=False) as r:
        r.worker_pids()                                              # the pool starts with the first batch
        t0 = time.monotonic()
        job = r.submit([_math(NESTED, "1"), _math("\\boxed{2}")])
        assert time.monotonic() - t0 < 0.5 and not job.done()
        with pytest.raises(TimeoutError):
            job.result(timeout=0.01)
        res = job.result(timeout=10)
        assert [x.reason for x in res] == ["timeout", "ok"] and job.n_done == 2
        c = r.counters()
        assert c["n_items"] == 2 and c["n_batches"] == 1 and c["n_timeout"] == 1 and c["mean_seconds"] > 0.5


def test_penalties():
    loop = "<think>" + "I will check again. " * 60 + "</think> \\boxed{2}"
    items = [_math(loop), _math("<think>ok</think> \\boxed{2}", truncated=True),
             _math("<think>a b c</think> \\boxed{2}")]
    res = score(items, timeout_s=5, truncation_penalty=0.5, repetition_penalty=0.2, num_workers=2)
    assert res[0].reason == "ok" and res[0].correct == 1.0 and 0.8 < res[0].reward < 0.81    # 1 - 0.2 * ~0.97
    assert res[1].reason == "truncated" and res[1].correct == 0.0 and res[1].reward == pytest.approx(-0.5)
    assert res[2].reward == pytest.approx(1.0)
    # off at 0: a truncated response is simply not rewarded (and needs no verifier process at all)
    with Rewarder() as r:
        assert r.score([items[1]])[0].reward == 0.0 and r._pool is None
    with pytest.raises(ValueError, match=">= 0"):
        Rewarder(truncation_penalty=-1)


def test_bad_items_raise_naming_the_item_bad_references_score_zero(rewarder):
    with pytest.raises(ValueError, match="item 1: unknown domain 'chem'"):
        score([_math("\\boxed{2}"), {"domain": "chem", "response": "x", "reference": "y"}])
    with pytest.raises(ValueError, match="item 0: response must be a str"):
        score([_math(None)])
    with pytest.raises(ValueError, match="item 0: missing key"):
        score([{"domain": "math", "response": "x"}])
    items = [_math("\\boxed{2}", ""), {"domain": "code", "response": "```python\nprint(1)\n```",
                                        "reference": {"tests": "not a list"}}, _math("\\boxed{2}")]
    res = rewarder.score(items)
    assert [x.reason for x in res] == ["bad_reference", "bad_reference", "ok"]
    assert res[0].detail.startswith("item 0:") and res[1].detail.startswith("item 1:")


def test_closed_rewarder_refuses_work():
    r = Rewarder(num_workers=1)
    pids = r.worker_pids()
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.submit([_math("\\boxed{2}")])
    time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/status").read().find("State:\tZ") < 0
                   for p in pids)


def test_scoring_from_a_non_main_thread(rewarder):
    """The classic failure: math-verify's signal.alarm raises off the main thread and every reward silently
    becomes 0. Here the caller's thread never touches signals; the answers are verified in workers."""
    import threading

    out = {}
    items = [_math("\\boxed{\\frac{1}{2}}", "0.5"), _math("\\boxed{[1,2)}", "[1,2)"), _math("\\boxed{3}")]
    t = threading.Thread(target=lambda: out.update(res=rewarder.score(items)))
    t.start()
    t.join(60)
    assert [r.reason for r in out["res"]] == ["ok", "ok", "wrong"]
