"""Run every microbenchmark in --quick mode on the current device (`make bench`); CSV rows go to bench/results/.

On a CPU-only machine the numbers are labelled "2-core CPU, no GPU" by bench/utils.py; on a GPU machine prefer
bench/gpu_check.sh, which also builds csrc and runs tests/gpu.
"""
import subprocess
import sys
from pathlib import Path

import torch

BENCHES = ["bench_fused_loss", "bench_attention", "bench_ssd", "bench_conv1d", "bench_mamba2", "bench_models",
           "bench_data", "bench_analysis", "bench_midtrain"]


def main() -> int:
    here = Path(__file__).resolve().parent
    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = []
    for name in BENCHES:
        script = here / f"{name}.py"
        if not script.exists():
            continue
        print(f"=== {name} ({device})", flush=True)
        rc = subprocess.call([sys.executable, str(script), "--device", device, "--quick"])
        if rc:
            failed.append(name)
    print("failed:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
