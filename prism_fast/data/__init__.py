"""prism_fast.data: raw JSONL / Parquet / text -> token shards -> exact weighted mixtures -> packed rows with
document boundaries -> a rank-aware, prefetching loader whose state_dict() resumes at the exact next sample.

    python -m prism_fast.data prepare --input FILES... --tokenizer PATH --out DIR [--domain D] [--format text|chat|qa]

    mix = Mixture([Source("shards/web", 0.3, "general"), Source("shards/math", 0.7, "math")])
    loader = build_loader(mix, seq_len=2048, rank=r, world_size=W, seed=0)
    batch = next(loader)      # input_ids / labels / position_ids / cu_seqlens / domain_ids (loader.py)
    val = build_val_loader(mix, seq_len=2048, rank=r, world_size=W)

The index builders (blended, concat, best-fit-decreasing) are C++ (csrc/data) with a Python twin, dispatched in
prism_fast.ops.data_index. Formats: see shards.py (on disk) and readers.py (inputs and formatting).
"""
from prism_fast.data import presets
from prism_fast.data.corpora import default_corpus
from prism_fast.data.loader import IGNORE_INDEX, PackedDataset, PackedLoader, build_loader, collate
from prism_fast.data.mixture import Mixture, Source
from prism_fast.data.prepare import load_tokenizer, prepare, tokenizer_fingerprint, tokenizer_info
from prism_fast.data.readers import BadInputError
from prism_fast.data.shards import Shard, open_shard
from prism_fast.data.val import ValLoader, build_val_loader

__all__ = [
    "BadInputError", "IGNORE_INDEX", "Mixture", "PackedDataset", "PackedLoader", "Shard", "Source", "ValLoader",
    "build_loader", "build_val_loader", "collate", "default_corpus", "load_tokenizer", "open_shard", "prepare",
    "presets", "tokenizer_fingerprint", "tokenizer_info",
]
