"""Difficulty filter (paper, SPEC section 3): sample k answers per prompt with the model to be RL-trained, count the
correct ones, keep prompts by a rule, and build the RL mixes.

    python -m prism_fast.rl.filter --model PATH --prompts FILE [FILE ...] --k 16 --keep paper|exact:1|min:1
        --out FILE [--balanced-out FILE] [--counts FILE]

--keep: `exact:N` keeps prompts with exactly N of k correct, `min:N` those with >= N, `paper` (default) the paper's
rule per domain: math exact:1, code and mc (science) min:1. --out receives the kept prompts (the "unbalanced" mix);
--balanced-out the "balanced" mix: each domain topped up with its 0/k prompts to the size of the largest kept domain.
Resumable: every prompt's pass count is appended to --counts (default OUT.counts.jsonl) as soon as its batch is
scored; a rerun skips the prompts already counted there (keyed by a hash of prompt + reference) and rebuilds the
mixes from the counts. Sampling is seeded per prompt (and per position in its --batch), so a rerun with the same
--batch reproduces the counts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from prism_fast.rl.prompts import read_records, render

PAPER_RULE = {"math": "exact:1", "code": "min:1", "mc": "min:1"}


def prompt_key(rec: dict) -> str:
    return hashlib.sha1(json.dumps([rec["prompt"], rec["reference"]], sort_keys=True).encode()).hexdigest()[:16]


def parse_rule(rule: str) -> tuple[str, int]:
    kind, _, n = rule.partition(":")
    if kind not in ("exact", "min") or not n.isdigit():
        raise ValueError(f"--keep {rule!r}; valid: paper, exact:N, min:N (e.g. exact:1)")
    return kind, int(n)


def keeps(rule: str, passes: int) -> bool:
    kind, n = parse_rule(rule)
    return passes == n if kind == "exact" else passes >= n


def build_mixes(records: list[dict], counts: dict[str, int], keep: str) -> tuple[list[dict], list[dict]]:
    """(unbalanced, balanced): kept prompts by the rule; plus 0/k prompts topping each domain up to the largest."""
    kept, zeros = {}, {}
    for rec in records:
        c = counts[prompt_key(rec)]
        rule = PAPER_RULE[rec["domain"]] if keep == "paper" else keep
        if keeps(rule, c):
            kept.setdefault(rec["domain"], []).append(rec)
        elif c == 0:
            zeros.setdefault(rec["domain"], []).append(rec)
    unbalanced = [r for d in sorted(kept) for r in kept[d]]
    target = max((len(v) for v in kept.values()), default=0)
    balanced = []
    for d in sorted(set(kept) | set(zeros)):
        have = kept.get(d, [])
        balanced += have + zeros.get(d, [])[:max(0, target - len(have))]
    return unbalanced, balanced


def _count_batch(engine, rewarder, tok, batch: list[dict], args) -> list[int]:
    from prism_fast.inference import SamplingParams  # noqa: PLC0415
    ids = [render(tok, r["prompt"]) for r in batch]
    params = [SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                             n=args.k, seed=int(prompt_key(r), 16) % (2**62) + args.seed) for r in batch]
    outs = engine.generate(ids, params)
    items = [{"domain": r["domain"], "response": c.text or "", "reference": r["reference"],
              "truncated": c.finish_reason == "length"} for r, o in zip(batch, outs) for c in o.outputs]
    res = rewarder.score(items)
    return [sum(x.correct >= 1.0 for x in res[i * args.k:(i + 1) * args.k]) for i in range(len(batch))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="prism_fast.rl.filter", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF directory or .gguf (anything from_pretrained reads)")
    p.add_argument("--prompts", required=True, nargs="+", help="prompt JSONL files (DESIGN 10 schema)")
    p.add_argument("--k", type=int, default=16, help="samples per prompt (paper: 16)")
    p.add_argument("--keep", default="paper", help="paper | exact:N | min:N")
    p.add_argument("--out", required=True, help="kept prompts (the unbalanced mix), JSONL")
    p.add_argument("--balanced-out", default=None, help="also write the balanced mix here")
    p.add_argument("--counts", default=None, help="pass counts, one JSON line per prompt (default OUT.counts.jsonl)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8, help="prompts per generate() call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-think", action="store_true", help="no <think> format gate (models that never think)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-item verifier time limit (s)")
    args = p.parse_args(argv)
    if args.keep != "paper":
        parse_rule(args.keep)
    if args.k < 1 or args.batch < 1:
        raise ValueError("--k and --batch must be >= 1")
    records = [r for f in args.prompts for r in read_records(Path(f))]
    counts_path = Path(args.counts or f"{args.out}.counts.jsonl")
    counts: dict[str, int] = {}
    if counts_path.exists():
        for line in counts_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                counts[rec["key"]] = rec["passes"]
    todo = [r for r in records if prompt_key(r) not in counts]
    if todo:
        import torch  # noqa: PLC0415
        from tqdm.auto import tqdm  # noqa: PLC0415

        from prism_fast.inference import Engine  # noqa: PLC0415
        from prism_fast.models import from_pretrained, load_tokenizer  # noqa: PLC0415
        from prism_fast.rewards import Rewarder  # noqa: PLC0415
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        model = from_pretrained(args.model, dtype=torch.bfloat16 if dev == "cuda" else torch.float32, device=dev)
        tok = load_tokenizer(args.model)
        engine = Engine(model, max_batch=max(args.batch * args.k, 1), tokenizer=tok)
        counts_path.parent.mkdir(parents=True, exist_ok=True)
        with Rewarder(timeout_s=args.timeout, require_think=not args.no_think) as rewarder, \
                open(counts_path, "a") as f, tqdm(total=len(records), initial=len(records) - len(todo),
                                                  desc="filter", unit="prompt") as bar:
            for s in range(0, len(todo), args.batch):
                batch = todo[s:s + args.batch]
                for rec, c in zip(batch, _count_batch(engine, rewarder, tok, batch, args)):
                    counts[prompt_key(rec)] = c
                    f.write(json.dumps({"key": prompt_key(rec), "domain": rec["domain"], "passes": c,
                                        "k": args.k}) + "\n")
                f.flush()
                bar.update(len(batch))
    unbalanced, balanced = build_mixes(records, counts, args.keep)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in unbalanced))
    if args.balanced_out:
        Path(args.balanced_out).write_text("".join(json.dumps(r) + "\n" for r in balanced))
    per_dom = {d: sum(r["domain"] == d for r in unbalanced) for d in sorted({r["domain"] for r in records})}
    print(f"{len(records)} prompts counted; kept {len(unbalanced)} ({per_dom}) -> {args.out}"
          + (f"; balanced mix {len(balanced)} -> {args.balanced_out}" if args.balanced_out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    from prism_fast.entry import run_entry
    sys.exit(run_entry(main))
