"""Memory bound of the `weights` command: comparing two checkpoints of a few hundred MB must need memory for a
few tensors (in fact: one bounded chunk), not for two models. Measured as peak RSS (VmHWM) of a subprocess
running the CLI, minus that process's own baseline after imports."""
import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

LARGEST = (8192, 4096)  # bf16: 64 MiB, the largest tensor
OTHERS = [(4096, 4096)] * 4  # bf16: 32 MiB each -> ~192 MiB per checkpoint

SCRIPT = r"""
import json, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
import runpy, torch, numpy, tqdm, matplotlib, prism_fast.analysis.cli, prism_fast.analysis  # imports first
torch.ones(1000).sum()
base = hwm()
sys.argv = ["prism_fast.analyze", *sys.argv[1:]]
runpy.run_module("prism_fast.analyze", run_name="__main__")  # = python -m prism_fast.analyze ...
res = json.load(open(sys.argv[sys.argv.index("--out") + 1] + "/weights.json"))
print(json.dumps({"baseline_mb": base, "peak_mb": hwm(), "bytes_read": res["bytes_read"]}))
"""


def _write(path, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(LARGEST, generator=g).bfloat16()}
    for i, s in enumerate(OTHERS):
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(s, generator=g).bfloat16()
    save_file(sd, str(path))
    return sum(t.numel() * t.element_size() for t in sd.values())


def test_weights_peak_rss_is_a_small_multiple_of_the_largest_tensor(tmp_path):
    size = _write(tmp_path / "a.safetensors", 0)
    _write(tmp_path / "b.safetensors", 1)
    largest = LARGEST[0] * LARGEST[1] * 2 / 2**20  # MiB
    out = subprocess.run([sys.executable, "-c", SCRIPT, "weights", "--base", str(tmp_path / "a.safetensors"),
                          "--new", str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "out"), "--no-plots",
                          "--no-progress"], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                          "PATH": "/usr/bin:/bin"}, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    extra = r["peak_mb"] - r["baseline_mb"]
    print(f"checkpoints 2 x {size / 2**20:.0f} MiB, largest tensor {largest:.0f} MiB, baseline {r['baseline_mb']:.0f}"
          f" MiB, peak {r['peak_mb']:.0f} MiB, extra {extra:.0f} MiB")
    assert r["bytes_read"] == 2 * size  # every byte of both checkpoints was actually read
    # Stated bound: 1.5x the largest tensor (here 96 MiB). Expected ~55 MiB (4M-element chunks, see engine.py);
    # loading both models would take 2 x 192 MiB.
    assert extra <= 1.5 * largest, extra
