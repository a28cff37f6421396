"""results.json / results.md of one evaluation, and `compare`: several runs side by side with deltas.

Every aggregate is printed with what it averages (a run on two benchmarks must not read like the paper's AVG),
and stand-in benchmarks are marked as such. `compare` takes the first directory as the baseline (base model,
then +MT, then +MT+RL in the paper's order) and adds the paper's AVG for the same model when it is one of the
paper's (prism_fast/eval/paper.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from prism_fast.entry import UserError
from prism_fast.eval.paper import PAPER_AVG, paper_model


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def results_markdown(res: dict) -> str:
    lines = [f"# Evaluation of {res['model']}", "",
             f"Scores in percent; headline metric {res['headline_metric']}; seed {res['seed']}."]
    if res["stand_ins"]:
        lines.append(f"**Stand-ins** (bundled CPU sets, not the paper's benchmarks): {', '.join(res['stand_ins'])}.")
    ks = sorted({k for b in res["benchmarks"].values() for k in b if k.startswith("pass@")},
                key=lambda k: int(k[5:]))
    lines += ["", "| benchmark | group | problems | samples | avg@n | " + " | ".join(ks) + " | mean score |",
              "|---|---|---|---|---|" + "---|" * len(ks) + "---|"]
    for name, b in res["benchmarks"].items():
        tag = " (stand-in)" if b["standin"] else ""
        group = b["group"] if b["in_aggregates"] else f"{b['group']} (not averaged)"
        lines.append(f"| {name}{tag} | {group} | {b['n_problems']} | {b['n_samples']} | {_fmt(b['avg@n'])} | "
                     + " | ".join(_fmt(b.get(k)) for k in ks) + f" | {_fmt(b['mean_score'])} |")
    lines += ["", "| aggregate | value | over |", "|---|---|---|"]
    for g, d in res["domains"].items():
        lines.append(f"| {g} | {_fmt(d['value'])} | {', '.join(d['benchmarks'])} |")
    ap, a6 = res["avg_paper"], res["avg_six"]
    lines.append(f"| avg_paper | {_fmt(ap['value'])} | domains {', '.join(ap['domains']) or '-'} "
                 f"({ap['definition']}) |")
    lines.append(f"| avg_six | {_fmt(a6['value'])} | {len(a6['benchmarks'])} benchmarks ({a6['definition']}) |")
    t = res.get("timing")
    if t and t.get("generated_samples"):
        lines += ["", f"Timing (this invocation): wall {t['wall_s']:.1f} s, generation {t['generate_s']:.1f} s "
                      f"({100 * t['engine_share_of_wall']:.0f}% of wall), scoring {t['score_s']:.1f} s; "
                      f"{t['generated_samples']} samples, {t['generated_tokens']} tokens, "
                      f"{t['generated_tokens_per_s']:.1f} generated tokens/s."]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, res: dict) -> None:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(results_markdown(res))


def read_results(d: str | Path) -> dict:
    p = Path(d) / "results.json"
    if not p.is_file():
        raise UserError(f"{d} has no results.json (run python -m prism_fast.eval --out {d} first)")
    return json.loads(p.read_text())


def _delta(x, base) -> str:
    if x is None or base is None:
        return _fmt(x)
    return f"{x:.2f} ({x - base:+.2f})"


def compare_markdown(dirs: list[str | Path], labels: list[str] | None = None) -> str:
    """Markdown table: rows = benchmarks, domains, avg_paper, avg_six; columns = runs (deltas vs the first)."""
    if len(dirs) < 1:
        raise UserError("compare needs at least one run directory")
    runs = [read_results(d) for d in dirs]
    labels = labels or [Path(d).name for d in dirs]
    if len(labels) != len(runs):
        raise UserError(f"compare: {len(labels)} labels for {len(runs)} directories")
    rows: list[tuple[str, list]] = []
    names = list(dict.fromkeys(n for r in runs for n in r["benchmarks"]))
    for n in names:
        tag = " (stand-in)" if any(r["benchmarks"].get(n, {}).get("standin") for r in runs) else ""
        rows.append((f"{n}{tag} avg@n", [r["benchmarks"].get(n, {}).get("avg@n") for r in runs]))
    for g in dict.fromkeys(g for r in runs for g in r["domains"]):
        rows.append((f"domain {g}", [r["domains"].get(g, {}).get("value") for r in runs]))
    rows.append(("**avg_paper** (mean of domains)", [r["avg_paper"]["value"] for r in runs]))
    rows.append(("avg_six (mean of benchmarks)", [r["avg_six"]["value"] for r in runs]))
    out = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(runs)]
    for name, vals in rows:
        out.append(f"| {name} | " + " | ".join([_fmt(vals[0])] + [_delta(v, vals[0]) for v in vals[1:]]) + " |")
    notes = [f"Deltas are against {labels[0]}. Percent."]
    for label, r in zip(labels, runs):
        ap = r["avg_paper"]
        if set(ap["domains"]) != {"math", "code", "gpqa"} or r["stand_ins"]:
            notes.append(f"{label}: avg_paper over {', '.join(ap['domains']) or 'nothing'}"
                         f"{' with stand-ins ' + ', '.join(r['stand_ins']) if r['stand_ins'] else ''}: "
                         f"not comparable with the paper's AVG.")
    pm = paper_model(runs[0]["model"]) or paper_model(runs[0].get("model_arg", ""))
    if pm:
        p = PAPER_AVG[pm]
        notes.append(f"Paper ({pm}) AVG base -> +MT -> +MT+RL: {p['base']:.2f} -> {p['mt']:.2f} -> "
                     f"{p['mt_rl']:.2f} (SPEC section 4).")
    return "\n".join(out) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
