"""REPORT.md of the study: every measured number beside the paper's claim (SPEC sections 4-5), with a plain
verdict per claim, the evaluation / held-out-loss tables, and PNG plots (the analyses' own plots, copied, plus the
study's evaluation and RL-reward plots).

Verdicts follow fixed, written-out criteria (CLAIMS below); they are computed from the measured numbers, never
typed in, and "not reproduced" is reported as plainly as "reproduced".
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
from pathlib import Path

STAGE_LABEL = {"base": "base", "mt": "+MT", "rl_base": "+RL", "rl_mt": "+MT+RL"}
FRAC_KEY = "1%"          # the paper's default changed-fraction threshold


def _f(x, prec=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)):
        return f"{x:.{prec - 1}e}"
    return f"{x:.{prec}f}" if isinstance(x, float) else str(x)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)])


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**reproduced**" if ok else "**not reproduced**")


def _more(a, b) -> str:
    """Verdict of 'a > b' where a tie (e.g. both stages solve nothing) is no evidence either way."""
    if a is None or b is None:
        return "n/a"
    return "**inconclusive** (tie)" if a == b else _verdict(a > b)


def _claims(r: dict) -> tuple[list[list], dict]:
    """Rows (claim, paper, measured, criterion, verdict) and the headline numbers they use."""
    w = r["weights"]["pairs"]
    mt, rlm, rlb = (w[k]["group"]["all"] for k in ("base->mt", "mt->rl_mt", "base->rl_base"))
    f_mt, f_rlm, f_rlb = (x["changed_frac"][FRAC_KEY] for x in (mt, rlm, rlb))
    l2_ratio = mt["rel_change"] / rlm["rel_change"] if rlm["rel_change"] else None
    comps = [c for c in w["mt->rl_mt"]["component"] if c in w["base->rl_base"]["component"]]
    diffs = {c: abs(w["mt->rl_mt"]["component"][c]["changed_frac"][FRAC_KEY]
                    - w["base->rl_base"]["component"][c]["changed_frac"][FRAC_KEY]) for c in comps}
    max_c = max(diffs, key=diffs.get) if diffs else None
    rl_comp = {c: v["changed_frac"][FRAC_KEY] for c, v in w["mt->rl_mt"]["component"].items()}
    top2 = sorted(rl_comp, key=rl_comp.get, reverse=True)[:2]
    cka = {k: v["min_cka_mean"] for k, v in r["cka"]["distributions"].items()}
    cka_min = min(cka.values())
    cos = r["direction"]["group"]["all"]["cosine"]
    ev = {m: r[f"eval_{m}"] for m in STAGE_LABEL}
    gain_mt = _sub(ev["rl_mt"]["avg_paper"], ev["mt"]["avg_paper"])
    gain_base = _sub(ev["rl_base"]["avg_paper"], ev["base"]["avg_paper"])
    (rew_mt, gain_rl_mt), (rew_base, gain_rl_base) = _reward_gain(r["rl_mt"]["reward"]), \
        _reward_gain(r["rl_base"]["reward"])
    rows = [
        ["MT changes most weights", "> 90% of weights change by > 1%", _pct(f_mt), "> 50%", _verdict(f_mt > 0.5)],
        ["RL changes few weights", "~5% (after MT)", f"{_pct(f_rlm)} (after MT), {_pct(f_rlb)} (from base)",
         "< 20% and < 1/3 of MT's", _verdict(f_rlm < 0.2 and f_rlm < f_mt / 3)],
        ["RL's relative L2 change is far smaller", "MT ~0.175 vs RL ~0.0003 (370-580x)",
         f"MT {_f(mt['rel_change'])} vs RL {_f(rlm['rel_change'])} ({_f(l2_ratio, 3)}x)", "ratio > 10x",
         _verdict(l2_ratio is not None and l2_ratio > 10)],
        ["RL changes the same weights from any start", "Base->RL vs MT->RL per-component fractions within ~1.8 pts",
         f"max gap {_pct(diffs[max_c]) if max_c else 'n/a'} ({max_c})", "every component within 1.8 points",
         _verdict(max(diffs.values()) <= 0.018 if diffs else None)],
        ["During RL, V and O move most", "v/o 5.6-8.5% changed", f"top two: {', '.join(top2)}",
         "{v, o} are the top two", _verdict(set(top2) == {"v", "o"})],
        ["MT and RL representations stay alike", "min layer CKA (MT vs MT+RL) >= 0.9993",
         ", ".join(f"{k} {_f(v)}" for k, v in cka.items()), "every set >= 0.99", _verdict(cka_min >= 0.99)],
        ["RL gains more after MT (eval)", "AVG base->RL < MT->RL gain (e.g. Granite +12.3 after MT)",
         f"gain after MT {_f(gain_mt, 2)} vs from base {_f(gain_base, 2)} pts (stand-ins)", "after MT > from base",
         _more(gain_mt, gain_base)],
        ["RL gains more after MT (training reward)", "(same claim, RL-time view)",
         f"reward gain (last third - first third of the steps) {_f(gain_rl_mt, 3)} after MT vs {_f(gain_rl_base, 3)}"
         f" from base; final level {_f(rew_mt, 3)} vs {_f(rew_base, 3)}", "gain after MT > gain from base",
         _more(gain_rl_mt, gain_rl_base)],
        ["Update direction (not the paper's pair)", "cos(MC update, MCS update) 0.52-0.62",
         f"cos(MT update, RL-from-base update) {_f(cos)}", "reported only (different comparison)", "n/a"],
    ]
    return rows, {"f_mt": f_mt, "f_rlm": f_rlm, "cka_min": cka_min}


def _sub(a, b):
    return None if a is None or b is None else a - b


def _reward_gain(xs: list) -> tuple[float | None, float | None]:
    """(mean reward of the last third of the RL steps, that minus the mean of the first third)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    k = max(1, len(xs) // 3)
    last, first = sum(xs[-k:]) / k, sum(xs[:k]) / k
    return last, last - first


def _eval_tables(r: dict) -> str:
    ev = {m: r[f"eval_{m}"] for m in STAGE_LABEL}
    benches = list(ev["base"]["benchmarks"])
    rows = [[b, *(_f(ev[m]["benchmarks"].get(b), 1) for m in STAGE_LABEL)] for b in benches]
    rows.append(["AVG (paper's domain mean, stand-ins)", *(_f(ev[m]["avg_paper"], 1) for m in STAGE_LABEL)])
    doms = list(ev["base"]["heldout_loss"])
    loss = [[d, *(_f(ev[m]["heldout_loss"].get(d)) for m in STAGE_LABEL)] for d in doms]
    hdr = ["", *STAGE_LABEL.values()]
    return (_table(hdr, rows) + "\n\nHeld-out next-token loss (nats/token) per domain, the trainer's validation split "
            "of the bundled corpora:\n\n" + _table(hdr, loss))


def _plots(study, r: dict, out: Path) -> list[str]:
    """Copy the analyses' PNGs and draw the study's own two: evaluation per stage and RL reward per step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = []
    for stage in ("weights", "direction", "cka", "landscape"):
        for p in sorted((study.out / "stages" / stage).glob("*.png")):
            shutil.copy(p, out / p.name)
            names.append(p.name)
    ev = {m: r[f"eval_{m}"] for m in STAGE_LABEL}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(STAGE_LABEL.values()), [ev[m]["avg_paper"] or 0 for m in STAGE_LABEL], color="tab:blue")
    ax.set_ylabel("AVG (stand-ins), %")
    ax.set_title("evaluation per stage")
    fig.tight_layout()
    fig.savefig(out / "study_eval.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for m in ("rl_base", "rl_mt"):
        ax.plot(range(1, len(r[m]["reward"]) + 1), r[m]["reward"], marker="o", label=STAGE_LABEL[m])
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "study_rl_reward.png", dpi=110)
    plt.close(fig)
    return ["study_eval.png", "study_rl_reward.png", *names]


def write_report(study, seconds: float) -> Path:
    r = {k: v["result"] for k, v in study.records.items()}
    out = study.report_dir
    out.mkdir(parents=True, exist_ok=True)
    rows, _ = _claims(r)
    pngs = _plots(study, r, out)
    load, load0 = os.getloadavg(), study.load_at_start
    total = sum(rec["seconds"] for rec in study.records.values())
    s = study.size
    ran = [n for n, v in study.ran.items() if v]
    stage_rows = [[n, _f(rec["seconds"], 1), "yes" if study.ran.get(n) else "cached"]
                  for n, rec in study.records.items()]
    lines = [
        f"# Mini-PRISM study: mode `{study.mode}`", "",
        f"Measured {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} cores, no GPU), load average (1/5/15 min) {load0[0]:.1f} / {load0[1]:.1f} / "
        f"{load0[2]:.1f} at the start and {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (the machine is "
        f"shared: wall times are inflated by the load). Wall time of this invocation: {seconds / 60:.1f} min "
        f"(stages run now: {', '.join(ran) or 'none, all cached'}); sum of every stage's last run: "
        f"{total / 60:.1f} min.",
        f"Command: `python -m prism_fast.study{'' if study.mode == 'full' else ' --' + study.mode}`.", "",
        f"Model: {'a 2-layer slice of SmolLM2-135M-Instruct' if s['model'] == 'slice2' else 'SmolLM2-135M-Instruct'}."
        f" MT: {s['mt']['steps']} steps x {s['mt']['global_batch_size']} rows x {s['mt']['seq_len']} tokens on the "
        "bundled MCS-proportioned mixture (general 10 / math 37 / code 40.5 / science 12.5 %). RL (GRPO, the `demo` "
        f"recipe): {s['rl']['steps']} steps x {s['rl']['prompts_per_step']} prompts x {s['rl']['group_size']} "
        f"samples of <= {s['rl']['max_new_tokens']} tokens, lr {s['rl']['lr']}, from base and from +MT with the same "
        "prompts and seeds. Everything is a miniature: a few thousand tokens of training instead of 26B, stand-in "
        "benchmarks instead of the paper's, so the numbers test the *direction* of each claim, not its size."
        + (" `--smoke` is a plumbing check (every stage runs, on a model with 2 of 30 blocks and a few steps): its "
           "numbers are no evidence for or against the paper." if study.mode == "smoke" else ""), "",
        "## Claims of the paper next to the measurement", "",
        _table(["claim", "paper (SPEC 4-5)", "measured", "criterion", "verdict"], rows), "",
        f"Changed fraction = share of elements with |w_new - w_old| > {FRAC_KEY} |w_old|; relative L2 = "
        "||W_new - W_old||_F / ||W_old||_F over all weights (docs/analysis.md states the aggregation rules). CKA: "
        "minimum over layers of linear CKA on mean-pooled hidden states, bootstrap mean over the bundled stand-in "
        "inputs (prose / web / math, not WikiText / C4 / GSM8K).", "",
        "## Evaluation (avg@n, %, on the bundled stand-ins: not the paper's benchmarks)", "",
        _eval_tables(r), "",
        f"Decoding: first {s['eval']['limit']} problems per stand-in, {s['eval']['n']} samples, <= "
        f"{s['eval']['max_new_tokens']} new tokens, the evaluator's per-domain temperatures.", "",
        "## Weight change per component (changed fraction at 1% / relative L2)", "",
        _component_table(r), "",
        "## Interpolation landscape", "",
        _landscape_table(r), "",
        "## Stages", "", _table(["stage", "seconds (its last run)", "run now"], stage_rows), "",
        "## Plots", "", *(f"![{p}]({p})" for p in pngs), "",
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _component_table(r: dict) -> str:
    w = r["weights"]["pairs"]
    keys = ("base->mt", "mt->rl_mt", "base->rl_base")
    comps = list(w["base->mt"]["component"])
    rows = [[c, *(f"{_pct(w[k]['component'][c]['changed_frac'][FRAC_KEY])} / {_f(w[k]['component'][c]['rel_change'])}"
                  if c in w[k]["component"] else "n/a" for k in keys)] for c in comps]
    return _table(["component", *keys], rows)


def _landscape_table(r: dict) -> str:
    ls = r["landscape"]
    key = next(iter(ls["matrices"]))
    m = ls["matrices"][key]
    rows = [[f"a={a:g}", *(_f(v) for v in m[i])] for i, a in enumerate(ls["alphas"])]
    return (f"Score `{key}` on W(a, b) = W_base + a (W_MT - W_base) + b (W_RL - W_MT); (0,0) = base, (1,0) = +MT, "
            "(1,1) = +MT+RL. The paper scores MATH500 pass rate; the miniature scores next-token loss on bundled "
            "prose (lower is better).\n\n" + _table(["", *(f"b={b:g}" for b in ls["betas"])], rows))
