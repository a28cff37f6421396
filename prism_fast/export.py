"""Export a mid-training checkpoint (DCP) to a Hugging Face directory that transformers loads.

    python -m prism_fast.export --ckpt RUN_OR_STEP_DIR --out DIR [--dtype bf16|fp32] [--allow-nonfinite]

RUN_OR_STEP_DIR: a `step-N/` checkpoint (must carry the COMPLETE marker), a run directory or its checkpoints/
directory (the newest complete checkpoint is used). The checkpoint is verified (every byte against its COMPLETE
manifest) before anything is written, and NaN / inf weights are refused unless --allow-nonfinite. This module is only the command line: the work is
prism_fast.train.hf_export.export_checkpoint (what the trainers call; see there for how and at what memory).
"""
from __future__ import annotations

import argparse
import sys

from prism_fast.train.checkpoint import resolve_step_dir
from prism_fast.train.hf_export import DTYPES, export_checkpoint

__all__ = ["export_checkpoint", "main"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="step-N dir, checkpoints/ dir or run dir")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="export even if some weights are NaN / inf (refused by default)")
    args = p.parse_args(argv)
    out = export_checkpoint(args.ckpt, args.out, dtype=args.dtype, verify=True,
                            allow_nonfinite=args.allow_nonfinite)
    print(f"exported {resolve_step_dir(args.ckpt)} -> {out} ({args.dtype})")
    return 0


if __name__ == "__main__":
    from prism_fast.entry import run_entry  # one `error:` line for bad --ckpt / --out, not a traceback
    sys.exit(run_entry(main))
