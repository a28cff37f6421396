"""The mini-PRISM pipeline as cached stages: base -> MT -> RL and base -> RL, evaluation of the four models, the
SPEC section 5 analyses, and the report.

Every stage runs the project's own entry points as subprocesses (midtrain, rl, eval, analyze): the study composes
them exactly as a user would, each in a fresh process (no state leaks between stages, a crash is confined to its
stage, its full output kept in `<stage>/log.txt`). Only held-out loss runs in-process (study/heldout.py).

Stage graph (names are the directories under `<out>/stages/`):
    base -> mt -> rl_mt ;  base -> rl_base ;  eval_<m> for m in base, mt, rl_base, rl_mt
    weights (base->mt, mt->rl_mt, base->rl_base) ; direction (mt vs rl_base, both from base)
    cka (mt vs rl_mt) ; landscape (base, mt, rl_mt)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from prism_fast.entry import UserError
from prism_fast.study.cache import StageDir, stage_key
from prism_fast.study.heldout import heldout_loss, slice_smollm2
from prism_fast.study.modes import MODES

MODEL_STAGES = ("base", "mt", "rl_base", "rl_mt")
BENCHES = ("math_standin", "code_standin", "science_standin")


def _est_kind(name: str) -> str:
    return "eval" if name.startswith("eval_") else "rl" if name.startswith("rl_") else name


class _StageBar:
    """tqdm bar over estimated seconds: while a stage runs, a ticker advances the bar one unit per second up to
    that stage's estimate (so tqdm's rate and ETA stay meaningful); at the end the bar jumps to the stage's share."""

    def __init__(self, total: float, enabled: bool):
        self.bar = tqdm(total=round(total), unit="s", disable=not enabled, dynamic_ncols=True,
                        bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")
        self._stop = threading.Event()

    def run(self, name: str, est: float, fn):
        self.bar.set_description_str(f"study: {name}")
        start, self._stop = self.bar.n, threading.Event()

        def tick(stop=self._stop):
            while not stop.wait(1.0):
                if self.bar.n - start < 0.95 * est:
                    self.bar.update(1)
        t = threading.Thread(target=tick, daemon=True)
        t.start()
        try:
            return fn()
        finally:
            self._stop.set()
            t.join()
            self.bar.update(max(0, round(start + est - self.bar.n)))

    def skip(self, name: str, est: float):
        self.bar.set_description_str(f"study: {name} (cached)")
        self.bar.update(round(est))

    def close(self):
        self.bar.set_description_str("study: done")
        self.bar.close()


def run_logged(cmd: list[str], log: Path, *, timeout_s: float) -> None:
    """Run one entry point with its output in `log`; a failure raises a one-line error naming the log.

    If the study itself is stopped (Ctrl-C, or SIGTERM, which __main__ turns into SystemExit), the child gets
    SIGTERM and up to 120 s to exit: the trainers save a checkpoint at their current step, which the rerun's
    `--checkpoint.resume=auto` picks up; no orphan keeps running after the study."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise UserError(f"{cmd[2]} ran longer than {timeout_s:.0f} s; see {log}") from None
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise UserError(f"`{' '.join(cmd[1:4])} ...` failed (exit {rc}: {tail[0][:200]}); full output in {log}")


def _metrics(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


class Study:
    """One study directory in one mode: `run()` walks the stage graph (module docstring) through the cache and
    writes the report. `records[stage]` = that stage's DONE record ({"key", "run_id", "seconds", "result"});
    `ran[stage]` = whether this invocation ran it (False: cached)."""

    def __init__(self, out: Path, mode: str, *, progress: bool = True, stage_timeout_s: float | None = None,
                 report_dir: Path | None = None):
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.out, self.mode, self.size = Path(out), mode, MODES[mode]
        self.records: dict[str, dict] = {}
        self.ran: dict[str, bool] = {}
        self.progress = progress
        self.stage_timeout_s = stage_timeout_s
        self.report_dir = Path(report_dir) if report_dir else self.out / "report"
        self.load_at_start = os.getloadavg()

    # ------------------------------------------------------------------ machinery
    def stage(self, name: str, config: dict, deps: tuple[str, ...], fn) -> dict:
        """Run `fn(dir, resumed) -> result` unless a completed run with the same key exists; return the result."""
        key = stage_key(name, {"mode": self.mode, **config}, {d: self.records[d]["run_id"] for d in deps})
        sd = StageDir(self.out / "stages", name, key)
        rec = sd.done()
        est = self.size["est_s"][_est_kind(name)]
        self.ran[name] = rec is None
        if rec is None:
            def work():
                resumed = sd.start()
                t0 = time.perf_counter()
                return sd.finish(fn(sd.path, resumed), time.perf_counter() - t0)
            rec = self._bar.run(name, est, work)
        else:
            self._bar.skip(name, est)
        self.records[name] = rec
        return rec["result"]

    def _timeout(self, est: float) -> float:
        return self.stage_timeout_s or max(1800.0, 20 * est)

    def _run(self, d: Path, kind: str, cmd: list[str]) -> None:
        run_logged([sys.executable, "-m", *cmd], d / "log.txt", timeout_s=self._timeout(self.size["est_s"][kind]))

    def model(self, name: str) -> str:
        return self.records[name]["result"]["model"]

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        from prism_fast.study.report import write_report
        names = [*MODEL_STAGES, *(f"eval_{m}" for m in MODEL_STAGES), "weights", "direction", "cka", "landscape",
                 "report"]
        self._bar = _StageBar(sum(self.size["est_s"][_est_kind(n)] for n in names), self.progress)
        t0 = time.perf_counter()
        try:
            self.stage("base", {"model": self.size["model"]}, (), self._base)
            self.stage("mt", self.size["mt"], ("base",), self._mt)
            self.stage("rl_base", self.size["rl"], ("base",), lambda d, r: self._rl(d, r, self.model("base")))
            self.stage("rl_mt", self.size["rl"], ("mt",), lambda d, r: self._rl(d, r, self.model("mt")))
            for m in MODEL_STAGES:
                self.stage(f"eval_{m}", {"eval": self.size["eval"], "heldout": self.size["heldout"]}, (m, "base"),
                           lambda d, r, m=m: self._eval(d, self.model(m)))
            self.stage("weights", {}, MODEL_STAGES, self._weights)
            self.stage("direction", {}, ("base", "mt", "rl_base"), self._direction)
            self.stage("cka", self.size["cka"], ("mt", "rl_mt"), self._cka)
            self.stage("landscape", self.size["landscape"], ("base", "mt", "rl_mt"), self._landscape)
            report = self._bar.run("report", self.size["est_s"]["report"],
                                   lambda: write_report(self, time.perf_counter() - t0))
        finally:
            self._bar.close()
        return {"report": str(report), "ran": [n for n, v in self.ran.items() if v]}

    def _base(self, d: Path, resumed: bool) -> dict:
        if self.size["model"] == "slice2":
            return {"model": str(slice_smollm2(d / "model", num_layers=2))}
        from prism_fast.models import smollm2_hf_dir
        return {"model": str(smollm2_hf_dir())}

    def _mt(self, d: Path, resumed: bool) -> dict:
        s = self.size["mt"]
        self._run(d, "mt", ["prism_fast.midtrain", "--recipe", "demo", f"--model.path={self.model('base')}",
                            f"--train.run_dir={d / 'run'}", f"--train.steps={s['steps']}",
                            f"--train.global_batch_size={s['global_batch_size']}", f"--data.seq_len={s['seq_len']}",
                            f"--data.val_batches={s['val_batches']}", f"--data.cache_dir={self.out / 'corpus'}",
                            "--checkpoint.interval=0", "--checkpoint.keep_last=1", "--checkpoint.export_dtype=fp32",
                            f"--checkpoint.resume={'auto' if resumed else 'none'}", "--metrics.progress_bar=false"])
        recs = _metrics(d / "run")
        vals = [r["val_loss"] for r in recs if "val_loss" in r]
        train = [r["loss"] for r in recs if "loss" in r]
        return {"model": str(d / "run" / "export"), "val_loss_start": vals[0] if vals else None,
                "val_loss_end": vals[-1] if vals else None, "train_loss": train}

    def _rl(self, d: Path, resumed: bool, start: str) -> dict:
        s = self.size["rl"]
        # smoke: the 2-layer slice never answers correctly; a repetition penalty makes rewards differ within a
        # group (non-zero advantages), so RL really updates the weights (as in tests/rl).
        extra = (["--reward.repetition_penalty=1", "--reward.repetition_ngram=1"] if s["repetition_penalty"] else [])
        self._run(d, "rl", ["prism_fast.rl", "--recipe", "demo", f"--model.path={start}",
                            f"--train.run_dir={d / 'run'}", f"--train.steps={s['steps']}",
                            f"--rollout.prompts_per_step={s['prompts_per_step']}",
                            f"--rollout.group_size={s['group_size']}",
                            f"--rollout.max_new_tokens={s['max_new_tokens']}",
                            f"--optim.lr={s['lr']}", "--checkpoint.interval=0", "--checkpoint.keep_last=1",
                            "--checkpoint.export_final=true", "--checkpoint.export_dtype=fp32",
                            f"--checkpoint.resume={'auto' if resumed else 'none'}", "--metrics.progress_bar=false",
                            *extra])
        recs = [r for r in _metrics(d / "run") if "reward" in r]
        return {"model": str(d / "run" / "export"), "start": start,
                "reward": [r["reward"] for r in recs],
                "pass_rate_per_domain": [r.get("pass_rate_per_domain") for r in recs]}

    def _eval(self, d: Path, model: str) -> dict:
        e, h = self.size["eval"], self.size["heldout"]
        benches = [a for b in BENCHES for a in ("--bench", b)]
        self._run(d, "eval", ["prism_fast.eval", "--model", model, *benches, "--out", str(d / "eval"),
                              "--n", str(e["n"]), "--max-new-tokens", str(e["max_new_tokens"]),
                              "--limit", str(e["limit"]), "--no-progress"])
        res = json.loads((d / "eval" / "results.json").read_text())
        loss = heldout_loss(model, self.out / "corpus", seq_len=h["seq_len"], rows_per_domain=h["rows_per_domain"],
                            tokenizer=self.model("base"))
        return {"model": model, "benchmarks": {k: v["avg@n"] for k, v in res["benchmarks"].items()},
                "domains": {k: v["value"] for k, v in res["domains"].items()},
                "avg_paper": res["avg_paper"]["value"], "heldout_loss": loss}

    def _analyze(self, d: Path, kind: str, args: list[str]) -> dict:
        self._run(d, kind, ["prism_fast.analyze", kind, *args, "--out", str(d), "--no-progress"])
        return json.loads((d / f"{kind}.json").read_text())

    def _weights(self, d: Path, resumed: bool) -> dict:
        b, mt, rb, rm = (self.model(m) for m in MODEL_STAGES)
        res = self._analyze(d, "weights", ["--base", b, "--new", mt, "--base", mt, "--new", rm, "--base", b,
                                           "--new", rb])
        keep = ("base", "new", "component", "group", "layer")   # per-tensor rows stay in weights.json only
        pairs = [{k: p[k] for k in keep if k in p} for p in res["pairs"]]
        return {"pairs": dict(zip(("base->mt", "mt->rl_mt", "base->rl_base"), pairs)),
                "thresholds": res["thresholds"]}

    def _direction(self, d: Path, resumed: bool) -> dict:
        res = self._analyze(d, "direction", ["--base", self.model("base"), "--new", self.model("mt"),
                                             "--new", self.model("rl_base")])
        return {k: v for k, v in res.items() if k != "tensor"}

    def _cka(self, d: Path, resumed: bool) -> dict:
        c = self.size["cka"]
        return self._analyze(d, "cka", ["--a", self.model("mt"), "--b", self.model("rl_mt"),
                                        "--num-inputs", str(c["num_inputs"]), "--resamples", str(c["resamples"]),
                                        "--resample-size", str(c["resample_size"]),
                                        "--max-tokens", str(c["max_tokens"])])

    def _landscape(self, d: Path, resumed: bool) -> dict:
        return self._analyze(d, "landscape", landscape_args(self.size["landscape"], self.model("base"),
                                                            self.model("mt"), self.model("rl_mt")))


def landscape_args(size: dict, base: str, mt: str, rl: str) -> list[str]:
    """`prism_fast.analyze landscape` arguments for one mode's grid. `--alphas=-0.5,...` with the `=`: as two
    words, argparse would take a grid that starts with a negative number for an option flag."""
    grid = ",".join(str(g) for g in size["grid"])
    return ["--base", base, "--mt", mt, "--rl", rl, f"--alphas={grid}", f"--betas={grid}",
            "--num-eval", str(size["num_eval"]), "--max-tokens", str(size["max_tokens"])]
