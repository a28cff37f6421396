"""Behaviour of a model across training stages (paper Table 15), from the evaluator's samples.

Input: one evaluation directory per stage (DIR/samples.jsonl + DIR/run_config.json written by
`python -m prism_fast.eval`, DESIGN section 11). Per stage, per benchmark and over all benchmarks:
  pass rate             mean of the samples' `correct` (in [0, 1]; partial credit counts as its value)
  median length         median number of generated tokens per response (`num_tokens`)
  mean NLL              mean negative log-probability per generated token, pooled over the responses (token-
                        weighted: sum of -log p over all generated tokens / their count)
each also split into correct (correct == 1) and incorrect (correct < 1) responses.
Where the NLL comes from, first match wins per sample:
  `token_logprobs` (list of the engine's per-token log-probs) -> used as is;
  `sum_logprob` with `num_tokens` -> -sum / num_tokens;
  otherwise, when a model is given (`--models`, or `auto` = the model in the stage's run_config.json), recomputed
  with it at temperature 1: the prompt is rebuilt exactly as the evaluator builds it (same benchmark file, chat
  template) and the response TEXT is re-tokenized, which can differ from the sampled token ids at a few
  boundaries (special tokens are dropped by the decode) -- stated in the report as "recomputed".
  Without either, NLL is reported as missing.
Output: <out>/behaviour.json, behaviour.md and behaviour.png (see write_behaviour_report).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from prism_fast.entry import UserError

SPLITS = ("all", "correct", "incorrect")


def read_samples(eval_dir: str | Path) -> list[dict]:
    """Rows of DIR/samples.jsonl (the evaluator's; one per sample). UserError when missing or empty."""
    path = Path(eval_dir) / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"{eval_dir}: no samples.jsonl; run `python -m prism_fast.eval ... --out {eval_dir}` first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise UserError(f"{path} has no samples")
    need = {"benchmark", "problem_id", "response", "correct"}
    if not need <= set(rows[0]):
        raise UserError(f"{path}: samples need the fields {sorted(need)}; got {sorted(rows[0])}")
    return rows


def _nll_from_fields(row: dict) -> tuple[float, int] | None:
    """(sum of -log p, tokens) from the sample's own fields, or None."""
    lp = row.get("token_logprobs")
    if lp:
        return -float(sum(lp)), len(lp)
    if row.get("sum_logprob") is not None and row.get("num_tokens"):
        return -float(row["sum_logprob"]), int(row["num_tokens"])
    return None


@torch.no_grad()
def recompute_nll(rows: list[dict], eval_dir: Path, model_path: str, progress: bool = True) -> dict[int, tuple]:
    """{row index: (sum of -log p, tokens)} for rows without log-prob fields, under `model_path` at T = 1."""
    from prism_fast.eval.benchmarks import load_benchmark  # noqa: PLC0415 (eval pulls in the rewards package)
    from prism_fast.eval.model_io import load_for_eval, prompt_ids  # noqa: PLC0415
    todo = [i for i, r in enumerate(rows) if _nll_from_fields(r) is None]
    if not todo:
        return {}
    cfg = json.loads((eval_dir / "run_config.json").read_text()) if (eval_dir / "run_config.json").is_file() else {}
    benches = cfg.get("benchmarks", {})
    problems = {}
    for name in {rows[i]["benchmark"] for i in todo}:
        f = benches.get(name, {}).get("file", "bundled")
        problems.update({(name, p.id): p for p in load_benchmark(name, None if f == "bundled" else f)})
    model, tok, _ = load_for_eval(model_path)
    model.eval()
    out = {}
    for i in tqdm(todo, desc=f"NLL {eval_dir.name}", disable=not progress, unit="sample"):
        r = rows[i]
        p = problems.get((r["benchmark"], str(r["problem_id"])))
        if p is None:
            raise UserError(f"{eval_dir}: problem {r['problem_id']} of {r['benchmark']} is not in its benchmark file")
        prompt = prompt_ids(tok, p.prompt)[0]
        resp = tok(r["response"], add_special_tokens=False)["input_ids"]
        if not resp:
            continue
        ids = torch.tensor([prompt + resp])
        targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)               # targets[t] = ids[t + 1]
        lp = model(ids, logprobs_of=targets)[0, len(prompt) - 1:len(prompt) - 1 + len(resp)]
        out[i] = (-float(lp.double().sum()), len(resp))
    return out


def _stats(rows: list[dict], nll: dict[int, tuple]) -> dict:
    """Pass rate, median length and pooled NLL of the rows (with their indices into nll)."""
    if not rows:
        return {"n": 0, "pass_rate": None, "median_tokens": None, "mean_nll": None, "nll_tokens": 0}
    lengths = [r["num_tokens"] for _, r in rows if r.get("num_tokens") is not None]
    s = [nll[i] for i, _ in rows if i in nll]
    tok = sum(n for _, n in s)
    return {"n": len(rows), "pass_rate": sum(float(r["correct"]) for _, r in rows) / len(rows),
            "median_tokens": statistics.median(lengths) if lengths else None,
            "mean_nll": sum(x for x, _ in s) / tok if tok else None, "nll_tokens": tok,
            "nll_coverage": len(s) / len(rows)}


def _split(indexed: list[tuple[int, dict]]) -> dict[str, dict]:
    return {"all": indexed, "correct": [x for x in indexed if float(x[1]["correct"]) >= 1.0],
            "incorrect": [x for x in indexed if float(x[1]["correct"]) < 1.0]}


def behaviour(eval_dirs: list[str], *, labels: list[str] | None = None, models: list[str] | None = None,
              benches: list[str] | None = None, progress: bool = True) -> dict:
    """The Table 15 statistics for each stage (one evaluation directory each). models: one per directory,
    "auto" (the run_config's model) or None (no recomputation)."""
    labels = labels or [Path(d).name for d in eval_dirs]
    if len(labels) != len(eval_dirs):
        raise UserError(f"--labels has {len(labels)} names for {len(eval_dirs)} --evals directories")
    if models and len(models) not in (1, len(eval_dirs)):
        raise UserError("--models takes one model per --evals directory (or one: 'auto')")
    stages, sources = {}, {}
    for k, (d, label) in enumerate(zip(eval_dirs, labels)):
        d = Path(d)
        rows = read_samples(d)
        if benches:
            rows = [r for r in rows if r["benchmark"] in benches]
            if not rows:
                raise UserError(f"{d}: no samples of {benches}")
        nll = {i: v for i, r in enumerate(rows) if (v := _nll_from_fields(r)) is not None}
        source = "sample fields" if nll else "missing"
        model = (models[k] if len(models) > 1 else models[0]) if models else None
        if model == "auto":
            model = json.loads((d / "run_config.json").read_text())["model"]
        if model and len(nll) < len(rows):
            nll |= recompute_nll(rows, d, model, progress)
            source = f"recomputed with {model} (response text re-tokenized)" if source == "missing" else \
                f"sample fields + recomputed with {model}"
        sources[label] = source
        indexed = list(enumerate(rows))
        per = {"all benchmarks": indexed}
        for name in dict.fromkeys(r["benchmark"] for r in rows):
            per[name] = [x for x in indexed if x[1]["benchmark"] == name]
        stages[label] = {bench: {split: _stats(sub, nll) for split, sub in _split(items).items()}
                         for bench, items in per.items()}
        stages[label]["_dir"] = str(d)
    return {"command": "behaviour", "stages": stages, "nll_source": sources,
            "rules": ["pass rate = mean of `correct` over samples (partial credit counts as its value)",
                      "median length = median generated tokens per response",
                      "mean NLL = sum of -log p over all generated tokens / their count (token-weighted, T = 1)",
                      "correct = samples with correct == 1; incorrect = the rest"]}


def _fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else (f"{x:.3f}" if isinstance(x, float) else str(x))


def behaviour_md(r: dict) -> str:
    out = ["# Behaviour (paper Table 15)\n", "Rules:\n", *[f"- {x}" for x in r["rules"]], "",
           "NLL source per stage: " + "; ".join(f"{k}: {v}" for k, v in r["nll_source"].items()) + "\n"]
    benches = list(dict.fromkeys(b for s in r["stages"].values() for b in s if b != "_dir"))
    for b in benches:
        out += [f"## {b}\n", "| stage | n | pass rate | median tokens | mean NLL | median tokens (correct / "
                "incorrect) | mean NLL (correct / incorrect) |", "|---|---|---|---|---|---|---|"]
        for label, s in r["stages"].items():
            if b not in s:
                continue
            a, c, i = (s[b][k] for k in SPLITS)
            out.append(f"| {label} | {a['n']} | {_fmt(a['pass_rate'], True)} | {_fmt(a['median_tokens'])} | "
                       f"{_fmt(a['mean_nll'])} | {_fmt(c['median_tokens'])} / {_fmt(i['median_tokens'])} | "
                       f"{_fmt(c['mean_nll'])} / {_fmt(i['mean_nll'])} |")
        out.append("")
    return "\n".join(out)


def plot_behaviour(r: dict, out: Path) -> list[Path]:
    """Three panels over stages (all benchmarks): pass rate, median tokens, mean NLL; bars per split."""
    from prism_fast.analysis.plots import _bars, _save, plt  # noqa: PLC0415 (matplotlib only when plotting)
    stages = list(r["stages"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, ylabel) in zip(axes, (("pass_rate", "pass rate"), ("median_tokens", "median tokens"),
                                        ("mean_nll", "mean NLL / token"))):
        splits = ("all",) if key == "pass_rate" else SPLITS
        _bars(ax, stages, {sp: [r["stages"][s]["all benchmarks"][sp][key] for s in stages] for sp in splits},
              ylabel)
        if key != "pass_rate":
            ax.legend(fontsize=7)
    return [_save(fig, out / "behaviour.png")]


def write_behaviour_report(result: dict, out_dir, *, plots: bool = True) -> dict[str, Path]:
    from prism_fast.analysis.report import _clean  # noqa: PLC0415
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "behaviour.json", "md": out / "behaviour.md"}
    paths["json"].write_text(json.dumps(_clean(result), indent=1))
    paths["md"].write_text(behaviour_md(result))
    if plots:
        paths["png0"] = plot_behaviour(result, out)[0]
    return paths
