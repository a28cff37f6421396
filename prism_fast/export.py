"""Export a mid-training checkpoint (DCP) to a Hugging Face directory that transformers loads.

    python -m prism_fast.export --ckpt RUN_OR_STEP_DIR --out DIR [--dtype bf16|fp32]

RUN_OR_STEP_DIR: a `step-N/` checkpoint (must carry the COMPLETE marker), a run directory or its checkpoints/
directory (the newest complete checkpoint is used). This module is only the command line: the work is
prism_fast.train.hf_export.export_checkpoint (what the trainers call; see there for how and at what memory).
"""
from __future__ import annotations

import argparse

from prism_fast.train.checkpoint import resolve_step_dir
from prism_fast.train.hf_export import DTYPES, export_checkpoint

__all__ = ["export_checkpoint", "main"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="step-N dir, checkpoints/ dir or run dir")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    out = export_checkpoint(args.ckpt, args.out, dtype=args.dtype)
    print(f"exported {resolve_step_dir(args.ckpt)} -> {out} ({args.dtype})")


if __name__ == "__main__":
    main()
