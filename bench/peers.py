"""Make the peer libraries importable on a machine without a package registry (the GPU check machine).

bench/peers/ carries (1.2 MB, fetched by bench/fetch_peers.sh):
  liger_kernel-*.whl, einops-*.whl   pure-Python wheels: a wheel is a zip of the package tree, so unzipping it
                                     into a directory on sys.path is an install (no pip, no metadata needed)
  mamba_ssm-*.tar.gz                 the source distribution: its Triton SSD kernels (mamba_ssm/ops/triton) are
                                     plain Python + Triton and need no build. Its top-level __init__.py imports
                                     the CUDA selective-scan extension, which only a build produces, so the
                                     unpacked copy gets a version-only __init__.py (nothing else is changed).
    python bench/peers.py --dest /tmp/peers          # unpack, print the directory to put on PYTHONPATH
    python bench/peers.py --dest /tmp/peers --check  # and import each peer, one line each (never fails)
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tarfile
import zipfile
from pathlib import Path

PEERS = Path(__file__).resolve().parent / "peers"
# what each peer provides to the benchmarks, and the module that proves it imports
CHECKS = {"liger_kernel": "liger_kernel.transformers.fused_linear_cross_entropy",
          "mamba_ssm": "mamba_ssm.ops.triton.ssd_combined",
          "einops": "einops",
          "flex_attention": "torch.nn.attention.flex_attention"}


def unpack(dest: Path) -> list[str]:
    """Unpack every wheel and the mamba_ssm sdist of bench/peers into dest; returns what was unpacked."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for whl in sorted(PEERS.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(dest)
        done.append(whl.name)
    for sdist in sorted(PEERS.glob("mamba_ssm-*.tar.gz")):
        with tarfile.open(sdist) as t:
            root = t.getnames()[0].split("/")[0]
            members = [m for m in t.getmembers() if m.name.startswith(f"{root}/mamba_ssm/")]
            t.extractall(dest / "_sdist", members=members, filter="data")
        pkg = dest / "mamba_ssm"
        if pkg.exists():
            import shutil
            shutil.rmtree(pkg)
        (dest / "_sdist" / root / "mamba_ssm").rename(pkg)
        version = root.split("-", 1)[1]
        (pkg / "__init__.py").write_text(f'__version__ = "{version}"  # bench/peers.py: no CUDA extension imports\n')
        done.append(sdist.name)
    return done


def check(dest: Path) -> dict[str, str]:
    """Import each peer from dest; {name: version or 'unavailable: <error>'}."""
    sys.path.insert(0, str(dest))
    # dest may have been on PYTHONPATH before it existed: drop the "no such directory" finder Python cached for it
    sys.path_importer_cache.pop(str(dest), None)
    importlib.invalidate_caches()
    out = {}
    for name, module in CHECKS.items():
        try:
            importlib.import_module(module)
            top = importlib.import_module(module.split(".")[0])
            out[name] = str(getattr(top, "__version__", "ok"))
        except Exception as e:      # a missing peer is reported; the benchmarks then skip that provider
            out[name] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", required=True, help="directory to unpack into (put it on PYTHONPATH)")
    ap.add_argument("--check", action="store_true", help="import each peer and print its version")
    args = ap.parse_args(argv)       # not utils.parse_args: a dry run really unpacks and imports (CPU can)
    dest = Path(args.dest).resolve()
    for name in unpack(dest):
        print(f"unpacked {name}", file=sys.stderr)
    if args.check:
        for name, status in check(dest).items():
            print(f"  {name}: {status}", file=sys.stderr)
    print(dest)


if __name__ == "__main__":
    main()
