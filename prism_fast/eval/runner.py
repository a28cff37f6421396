"""The evaluation loop: benchmarks -> chat prompts -> rollout engine -> verifiers -> samples.jsonl -> results.

Reproducible sampling that survives a kill: problem p of benchmark b gets the engine seed
S = hash(seed, b, p.id), and its samples j = 0..n-1 come from the engine's counter-based stream (S, i, j), where
i is the problem's position in its generation chunk. Chunks are consecutive runs of C = max(1, max_batch // n)
problems in file order (C is pinned in run_config.json), so i = index mod C is a property of the problem, not of
what happened to be left to do: a rerun regenerates exactly the chunks whose samples are missing and gets the
same samples as an uninterrupted run (the engine's draws do not depend on batching, DESIGN section 12).
Scoring: the benchmark's own scorer, else prism_fast.rewards on the answer part (the text after the last
`</think>` when the model thinks; the whole response otherwise; --require-think applies the RL format gate).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from prism_fast.entry import UserError
from prism_fast.eval.benchmarks import Decoding, get_spec, load_benchmark, parse_bench_arg
from prism_fast.eval.loaders import Problem
from prism_fast.eval.metrics import aggregate, summarize
from prism_fast.eval.model_io import load_for_eval, prompt_ids, stop_token_ids
from prism_fast.eval.store import SampleStore, check_run_config
from prism_fast.ranges import check_ranges, ranged

MAX_TIMEOUT_S = 86400.0  # per verifier task; far below where the dispatcher's deadline arithmetic overflows


@dataclass(kw_only=True)
class EvalConfig:
    model: str
    """An HF directory, a .gguf, a trainer run / checkpoint directory, or 'smollm2'."""
    benches: list[str]
    """NAME or NAME=FILE."""
    out: Path
    n: int | None = ranged(None, ge=1)
    """Samples per problem (None: the benchmark's default)."""
    max_new_tokens: int | None = ranged(None, ge=1)
    temperature: float | None = ranged(None, ge=0)
    """0 = greedy."""
    top_p: float | None = ranged(None, gt=0, le=1)
    limit: int | None = ranged(None, ge=1)
    """Evaluate only the first K problems of each benchmark."""
    seed: int = 0
    max_batch: int = ranged(64, ge=1)
    max_tokens_in_flight: int | None = ranged(None, ge=1)
    """KV budget in tokens (rows x per-row capacity) for the engine; None: max_batch full-length rows."""
    require_think: bool = False
    timeout_s: float = ranged(10.0, gt=0, le=MAX_TIMEOUT_S)
    num_workers: int | None = ranged(None, ge=1)
    progress: bool = True

    def __post_init__(self):
        # Checked when the config is built, before the output directory or its run_config.json exists: a bad
        # value (--temperature -1) used to be pinned in run_config.json and make the corrected rerun refuse.
        check_ranges(self, flags=lambda name: {"timeout_s": "--timeout"}.get(name, "--" + name.replace("_", "-")))
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file; name a new directory (or an earlier eval's, to resume)")

    def decoding(self, default: Decoding) -> Decoding:
        return Decoding(temperature=default.temperature if self.temperature is None else self.temperature,
                        top_p=default.top_p if self.top_p is None else self.top_p,
                        n=default.n if self.n is None else self.n,
                        max_new_tokens=default.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens)


@dataclass
class _Timing:
    generate_s: float = 0.0
    score_s: float = 0.0
    generated_tokens: int = 0
    generated_samples: int = 0
    engine: dict = field(default_factory=dict)


def problem_seed(seed: int, bench: str, problem_id: str) -> int:
    """The engine seed of one problem: a 63-bit hash of (seed, benchmark, problem id)."""
    return int(hashlib.sha256(f"{seed}|{bench}|{problem_id}".encode()).hexdigest()[:16], 16) >> 1


def answer_part(text: str) -> str:
    """What the verifier sees without the format gate: the text after the last </think>, else all of it."""
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def _score(spec, problems: list[Problem], texts: list[str], finish: list[str], cfg, rewarder) -> list[tuple]:
    """(correct in [0, 1], reason) per response."""
    if spec.scorer is not None:
        return [(float(s), "scorer") for s in spec.scorer(problems, texts)]
    items = [{"domain": p.domain, "response": t if cfg.require_think else answer_part(t), "reference": p.reference,
              "truncated": cfg.require_think and f == "length"} for p, t, f in zip(problems, texts, finish)]
    return [(r.correct, r.reason) for r in rewarder.score(items)]


def _run_benchmark(name, problems, dec, cfg, engine, tokenizer, stops, store, rewarder, bar, timing):
    from prism_fast.inference import SamplingParams  # noqa: PLC0415 (the engine imports models/ops)
    spec = get_spec(name)
    C = max(1, cfg.max_batch // dec.n)
    for start in range(0, len(problems), C):
        chunk = problems[start:start + C]
        if all(store.has((name, p.id, j)) for p in chunk for j in range(dec.n)):
            continue
        ids = [prompt_ids(tokenizer, p.prompt)[0] for p in chunk]
        params = [SamplingParams(temperature=dec.temperature, top_p=dec.top_p, n=dec.n,
                                 max_new_tokens=dec.max_new_tokens, seed=problem_seed(cfg.seed, name, p.id),
                                 stop_token_ids=stops, logprobs=False) for p in chunk]
        t0 = time.perf_counter()
        outs = engine.generate(ids, params)
        timing.generate_s += time.perf_counter() - t0
        flat = [(p, j, c) for p, o in zip(chunk, outs) for j, c in enumerate(o.outputs)]
        texts = [c.text if c.text is not None else tokenizer.decode(c.token_ids, skip_special_tokens=True)
                 for _, _, c in flat]
        t0 = time.perf_counter()
        scored = _score(spec, [p for p, _, _ in flat], texts, [c.finish_reason for _, _, c in flat], cfg, rewarder)
        timing.score_s += time.perf_counter() - t0
        timing.generated_tokens += sum(len(c.token_ids) for _, _, c in flat)
        timing.generated_samples += len(flat)
        store.append([{"benchmark": name, "problem_id": p.id, "sample_index": j, "response": text,
                       "correct": correct, "reward": correct, "reason": reason, "finish_reason": c.finish_reason,
                       "num_tokens": len(c.token_ids)}
                      for (p, j, c), text, (correct, reason) in zip(flat, texts, scored)
                      if not store.has((name, p.id, j))])       # a chunk cut short by a kill keeps its old lines
        bar.update(len(flat))


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) an evaluation into cfg.out; returns the results dict also written to results.json."""
    from prism_fast.eval.report import write_reports  # noqa: PLC0415
    from prism_fast.inference import Engine  # noqa: PLC0415
    from prism_fast.rewards import Rewarder  # noqa: PLC0415
    wall0 = time.perf_counter()
    if not cfg.benches:
        raise UserError("give at least one --bench NAME[=FILE]")
    benches = [parse_bench_arg(b) for b in cfg.benches]
    if len({n for n, _ in benches}) != len(benches):
        raise UserError("each benchmark may be given once")
    loaded = {n: load_benchmark(n, f, limit=cfg.limit) for n, f in benches}   # fail on bad data before loading
    decs = {n: cfg.decoding(get_spec(n).default_decoding()) for n, _ in benches}
    model, tokenizer, label = load_for_eval(cfg.model)
    fmt = prompt_ids(tokenizer, "x")[1]
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_run_config(cfg.out, {
        "model": cfg.model, "seed": cfg.seed, "prompt_format": fmt, "require_think": cfg.require_think,
        "benchmarks": {n: {"file": str(f) if f else "bundled", "temperature": decs[n].temperature,
                           "top_p": decs[n].top_p, "n": decs[n].n, "max_new_tokens": decs[n].max_new_tokens,
                           "chunk_problems": max(1, cfg.max_batch // decs[n].n)} for n, f in benches}})
    store = SampleStore(cfg.out)
    engine = Engine(model, max_batch=cfg.max_batch, max_tokens_in_flight=cfg.max_tokens_in_flight,
                    tokenizer=tokenizer)
    stops = stop_token_ids(tokenizer)
    total = sum(len(p) * decs[n].n for n, p in loaded.items())
    done = sum(store.has((n, p.id, j)) for n, ps in loaded.items() for p in ps for j in range(decs[n].n))
    timing = _Timing()
    with Rewarder(num_workers=cfg.num_workers, timeout_s=cfg.timeout_s, require_think=cfg.require_think) as rw, \
            tqdm(total=total, initial=done, unit="sample", desc="eval", disable=not cfg.progress) as bar:
        for name, problems in loaded.items():
            bar.set_postfix_str(name)
            _run_benchmark(name, problems, decs[name], cfg, engine, tokenizer, stops, store, rw, bar, timing)
    timing.engine = dict(engine.stats)
    results = collect_results(label, cfg, loaded, decs, store)
    wall = time.perf_counter() - wall0
    results["timing"] = {
        "wall_s": wall, "generate_s": timing.generate_s, "score_s": timing.score_s,
        "generated_samples": timing.generated_samples, "generated_tokens": timing.generated_tokens,
        "generated_tokens_per_s": timing.generated_tokens / timing.generate_s if timing.generate_s else None,
        "engine_share_of_wall": timing.generate_s / wall,
        "engine_stats": timing.engine,
        "note": "this invocation only (a resumed run times only the samples it generated)"}
    write_reports(cfg.out, results)
    return results


def collect_results(label: str, cfg: EvalConfig, loaded: dict, decs: dict, store: SampleStore) -> dict:
    benchmarks, headline, groups = {}, {}, {}
    for name, problems in loaded.items():
        spec = get_spec(name)
        per_problem = [[float(store.records[(name, p.id, j)]["correct"]) for j in range(decs[name].n)]
                       for p in problems]
        s = summarize(per_problem)
        d = decs[name]
        s.update(group=spec.group, standin=spec.standin, in_aggregates=spec.aggregated,
                 decoding={"temperature": d.temperature, "top_p": d.top_p, "n": d.n,
                           "max_new_tokens": d.max_new_tokens})
        benchmarks[name] = s
        if spec.aggregated:
            headline[name], groups[name] = s["avg@n"], spec.group
    return {"model": label, "model_arg": cfg.model, "seed": cfg.seed, "unit": "percent",
            "headline_metric": "avg@n (= unbiased pass@1)",
            "stand_ins": [n for n in loaded if get_spec(n).standin],
            "benchmarks": benchmarks, **aggregate(headline, groups)}
