"""The evaluation directory: samples.jsonl (append-only, the resume state) and run_config.json (what must match).

samples.jsonl holds one JSON object per finished sample, keyed by (benchmark, problem id, sample index). Each
generation chunk's lines are appended with ONE write followed by fsync, so a process killed at any point leaves
whole lines of finished chunks plus at most one torn last line, which `load` drops (it is regenerated).
run_config.json pins, per benchmark, what the samples depend on (model, seed, decoding, chunking, prompt format);
a rerun into the same directory with different settings is refused instead of silently mixing samples.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from prism_fast.entry import UserError

Key = tuple[str, str, int]


class SampleStore:
    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "samples.jsonl"
        self.records: dict[Key, dict] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good_bytes = 0
        for i, line in enumerate(lines):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                rec = json.loads(line)
                key = (rec["benchmark"], rec["problem_id"], int(rec["sample_index"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:]):
                    break                                   # torn tail of a killed run: drop it
                raise UserError(f"{self.path}:{i + 1}: not a sample record; the file is damaged "
                                f"(delete the line or use a new --out)") from None
            self.records.setdefault(key, rec)
            good_bytes += len(line) + 1
        if good_bytes < len(raw):                           # cut the torn tail so later appends start a line
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def has(self, key: Key) -> bool:
        return key in self.records

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for r in records:
            self.records.setdefault((r["benchmark"], r["problem_id"], r["sample_index"]), r)


def check_run_config(out_dir: Path, config: dict) -> None:
    """Write run_config.json, or check it against an earlier run in out_dir: the model and seed must match, and
    every benchmark present in both must have the same settings (new benchmarks are added)."""
    path = Path(out_dir) / "run_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for k in ("model", "seed", "prompt_format", "require_think"):
            if old.get(k) != config.get(k):
                raise UserError(f"{out_dir} holds a run with {k}={old.get(k)!r}, this one has {config.get(k)!r}; "
                                f"use a new --out (or the same settings to resume)")
        for name, b in config["benchmarks"].items():
            if name in old["benchmarks"] and old["benchmarks"][name] != b:
                diff = {k: (old["benchmarks"][name].get(k), v) for k, v in b.items()
                        if old["benchmarks"][name].get(k) != v}
                raise UserError(f"{out_dir}: benchmark {name} was run with other settings {diff} (old, new); "
                                f"use a new --out (or the same settings to resume)")
        config = {**old, "benchmarks": {**old["benchmarks"], **config["benchmarks"]}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(path)
