"""The engine on an FSDP2-sharded policy: 2 real ranks (torchrun, gloo, CPU); see _fsdp_worker.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fsdp2_sharded_policy_generates_like_the_plain_model(tmp_path):
    out = tmp_path / "verdict.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests/inference/_fsdp_worker.py"), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    verdicts = json.loads(out.read_text())
    assert verdicts == [{"rank": r, "same_as_plain": True, "resharded": True, "after_step": True} for r in (0, 1)]
