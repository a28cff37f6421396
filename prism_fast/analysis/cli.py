"""Argument parsing for `python -m prism_fast.analyze <command>`: weights, direction, trajectory, cka, landscape,
behaviour.
Each command writes <out>/<command>.json, <command>.md and PNG plots, and prints the markdown path."""
from __future__ import annotations

import argparse
import resource
import sys


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _stream_args(p):
    p.add_argument("--workers", default="1", help="worker processes ('auto' = one per core); 1 = in-process")
    p.add_argument("--thresholds", type=_floats, default=None,
                   help="comma-separated relative thresholds (default 0.001,0.005,0.01,0.02,0.05,0.1)")
    p.add_argument("--chunk-elements", type=int, default=None, help="max elements read per tensor chunk")
    p.add_argument("--allow-unclassified", action="store_true", help="report unknown parameter names as 'other'")
    p.add_argument("--dcp-prefix", default="auto", help="key prefix of the model state inside DCP checkpoints")


def _model_args(p):
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the first checkpoint's)")
    p.add_argument("--loader", choices=("prism", "hf"), default="prism",
                   help="prism_fast.models (default) or transformers' AutoModelForCausalLM")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each input to this many tokens")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m prism_fast.analyze",
                                 description="PRISM analyses of checkpoints (HF safetensors dirs, trainer DCP dirs). "
                                 "Each command writes <out>/<command>.json, <command>.md and PNG plots. "
                                 "Definitions: docs/analysis.md.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("weights", help="relative change and changed fraction per matrix/component/layer")
    p.add_argument("--base", action="append", required=True, help="old checkpoint (once, or once per --new)")
    p.add_argument("--new", action="append", required=True, help="new checkpoint (repeatable)")
    _stream_args(p)
    p = sub.add_parser("direction", help="cosine similarity of the updates B - A and C - A")
    p.add_argument("--base", required=True)
    p.add_argument("--new", action="append", required=True, help="exactly two: --new B --new C")
    _stream_args(p)
    p = sub.add_parser("trajectory", help="cumulative change over an ordered series of checkpoints")
    p.add_argument("--ckpts", required=True, nargs="+", help="a directory of checkpoints, a quoted glob, or paths")
    p.add_argument("--front-fraction", type=float, default=0.8)
    _stream_args(p)
    p = sub.add_parser("cka", help="linear CKA per layer on mean-pooled hidden states")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--inputs", nargs="+", default=["prose", "web", "math"],
                   help="bundled sets (prose, web, math) or text files with one input per line")
    p.add_argument("--num-inputs", type=int, default=200)
    p.add_argument("--resamples", type=int, default=20)
    p.add_argument("--resample-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    _model_args(p)
    p = sub.add_parser("landscape", help="score W(a, b) = W_base + a (W_MT - W_base) + b (W_RL - W_MT) on a grid")
    p.add_argument("--base", required=True)
    p.add_argument("--mt", required=True)
    p.add_argument("--rl", required=True)
    p.add_argument("--eval", default=None, help="held-out text file for the default next-token-loss score")
    p.add_argument("--num-eval", type=int, default=64)
    p.add_argument("--score", default=None, help="'module:function' called as fn(model, tokenizer) -> float|dict")
    p.add_argument("--alphas", type=_floats, default=None, help="comma-separated a values (default -0.5..1.5 x5)")
    p.add_argument("--betas", type=_floats, default=None)
    _model_args(p)
    p = sub.add_parser("behaviour", help="pass rate, response length and NLL of generated tokens per stage "
                       "(paper Table 15) from evaluation samples")
    p.add_argument("--evals", nargs="+", required=True,
                   help="evaluation directories (DIR/samples.jsonl), one per stage")
    p.add_argument("--labels", default=None, help="comma-separated stage names (default: directory names)")
    p.add_argument("--models", nargs="+", default=None,
                   help="models to recompute the NLL of samples without log-probs: one per --evals, or 'auto' "
                   "(the model each evaluation ran)")
    p.add_argument("--bench", action="append", default=None, help="only these benchmarks (repeatable)")
    for p in sub.choices.values():
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--no-plots", action="store_true")
    return ap


def _usage() -> dict:
    """Peak RSS (MiB, VmHWM) and CPU seconds of this process. Worker processes report their own figures
    (engine.compare), added by main()."""
    from prism_fast.analysis.engine import _vm_hwm_mb

    me = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mb": _vm_hwm_mb(), "cpu_seconds": me.ru_utime + me.ru_stime}


def run(args) -> dict:
    from prism_fast.analysis import cka, weights
    from prism_fast.analysis.landscape import landscape

    progress = not args.no_progress
    if args.command in ("weights", "direction", "trajectory"):
        kw = {"workers": args.workers if args.workers == "auto" else int(args.workers), "progress": progress,
              "allow_unclassified": args.allow_unclassified, "dcp_prefix": args.dcp_prefix}
        if args.thresholds:
            kw["thresholds"] = args.thresholds
        if args.chunk_elements:
            kw["chunk_elements"] = args.chunk_elements
        if args.command == "weights":
            return weights.weight_change(args.base if len(args.base) > 1 else args.base[0], args.new, **kw)
        if args.command == "direction":
            if len(args.new) != 2:
                raise SystemExit("direction needs exactly two --new checkpoints (B and C)")
            return weights.update_direction(args.base, args.new[0], args.new[1], **kw)
        ckpts = args.ckpts[0] if len(args.ckpts) == 1 else args.ckpts
        return weights.trajectory(ckpts, front_fraction=args.front_fraction, **kw)
    if args.command == "cka":
        return cka.cka_compare(args.a, args.b, args.inputs, num_inputs=args.num_inputs, num_resamples=args.resamples,
                               resample_size=args.resample_size, max_tokens=args.max_tokens, seed=args.seed,
                               tokenizer=args.tokenizer, loader=args.loader, progress=progress)
    if args.command == "behaviour":
        from prism_fast.analysis.behaviour import behaviour  # noqa: PLC0415
        return behaviour(args.evals, labels=args.labels.split(",") if args.labels else None, models=args.models,
                         benches=args.bench, progress=progress)
    grid = {k: v for k, v in (("alphas", args.alphas), ("betas", args.betas)) if v}
    return landscape(args.base, args.mt, args.rl, score_fn=args.score, eval_file=args.eval, num_eval=args.num_eval,
                     max_tokens=args.max_tokens, tokenizer=args.tokenizer, loader=args.loader, progress=progress,
                     **grid)


def main(argv=None) -> dict:
    import time

    from prism_fast.analysis.report import write_report

    args = build_parser().parse_args(argv)
    t0, cpu0 = time.perf_counter(), _usage()["cpu_seconds"]
    try:
        result = run(args)
    except ValueError as e:  # user errors: print the message (it says the fix), no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    # On a shared machine CPU seconds are the stable cost figure; wall time depends on the load.
    u = _usage()
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = u["cpu_seconds"] - cpu0 + result.get("worker_cpu_seconds", 0.0)  # imports excluded
    result["peak_rss_mb"] = {"self": u["peak_rss_mb"], "largest_worker": result.get("worker_peak_rss_mb", 0.0)}
    if args.command == "behaviour":
        from prism_fast.analysis.behaviour import write_behaviour_report  # noqa: PLC0415
        paths = write_behaviour_report(result, args.out, plots=not args.no_plots)
    else:
        paths = write_report(result, args.out, plots=not args.no_plots)
    print(paths["md"])
    return result
