"""Stage cache of the study: each stage's output directory is valid only for the inputs that made it.

A stage's key is sha256(stage name, its config, the *run ids* of the stages it reads). A run id is a fresh random
token written when a stage completes, so a stage that is re-run (its output deleted, or its config changed) gets a
new run id and every stage downstream of it sees a new key and re-runs too, while unrelated stages stay cached.

Directory protocol (`<root>/<stage>/`):
  STARTED  the key the directory was started with; a killed stage whose key still matches keeps its partial
           output (the trainers resume from their checkpoints, the evaluator from its samples file);
  DONE     JSON {"key", "run_id", "seconds", "result"} written last (atomically): the stage is complete.
A directory whose STARTED/DONE key differs from the current key is removed before the stage runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path


def stage_key(name: str, config: dict, dep_run_ids: dict[str, str]) -> str:
    blob = json.dumps({"stage": name, "config": config, "deps": dep_run_ids}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageDir:
    """One stage's output directory under the study root (see the module docstring for the protocol)."""

    def __init__(self, root: Path, name: str, key: str):
        self.path, self.name, self.key = Path(root) / name, name, key

    def done(self) -> dict | None:
        """The DONE record if the stage completed with this key, else None."""
        try:
            rec = json.loads((self.path / "DONE").read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.get("key") == self.key else None

    def start(self) -> bool:
        """Prepare the directory for a run; True when a partial run with the same key is being resumed."""
        started = self.path / "STARTED"
        resumed = started.is_file() and started.read_text().strip() == self.key and not (self.path / "DONE").exists()
        if not resumed and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        started.write_text(self.key + "\n")
        return resumed

    def finish(self, result: dict, seconds: float) -> dict:
        rec = {"key": self.key, "run_id": uuid.uuid4().hex, "seconds": round(seconds, 1), "result": result}
        tmp = self.path / "DONE.tmp"
        tmp.write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, self.path / "DONE")
        return rec
