"""prism_fast.checkpoint: integrity of trainer checkpoints (COMPLETE manifest, CRC-32 verification) and the CLI

    python -m prism_fast.checkpoint verify RUN_DIR      # each step-N/: intact | damaged (naming the file) | legacy

The writer and loader are in prism_fast.train.checkpoint (Checkpointer); this package has no torch dependency.
"""
from prism_fast.checkpoint.integrity import MARKER, check_files, file_crc32, read_manifest, verify

__all__ = ["MARKER", "check_files", "file_crc32", "read_manifest", "verify"]
