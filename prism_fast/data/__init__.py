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
import importlib

# Lazy exports: `python -m prism_fast.data prepare` must not pay for importing torch (the loader needs it).
_EXPORTS = {
    "presets": "prism_fast.data.presets", "corpora": "prism_fast.data.corpora",
    "default_corpus": "prism_fast.data.corpora",
    "IGNORE_INDEX": "prism_fast.data.loader", "PackedDataset": "prism_fast.data.loader",
    "PackedLoader": "prism_fast.data.loader", "build_loader": "prism_fast.data.loader",
    "collate": "prism_fast.data.loader",
    "Mixture": "prism_fast.data.mixture", "Source": "prism_fast.data.mixture",
    "load_tokenizer": "prism_fast.data.prepare_shards", "prepare": "prism_fast.data.prepare_shards",
    "tokenizer_fingerprint": "prism_fast.data.prepare_shards", "tokenizer_info": "prism_fast.data.prepare_shards",
    "BadInputError": "prism_fast.data.readers",
    "Shard": "prism_fast.data.shards", "open_shard": "prism_fast.data.shards",
    "ValLoader": "prism_fast.data.val", "build_val_loader": "prism_fast.data.val",
}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'prism_fast.data' has no attribute {name!r}")
    m = importlib.import_module(mod)
    value = m if mod.endswith("." + name) else getattr(m, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "BadInputError", "IGNORE_INDEX", "corpora", "Mixture", "PackedDataset", "PackedLoader", "Shard", "Source",
    "ValLoader",
    "build_loader", "build_val_loader", "collate", "default_corpus", "load_tokenizer", "open_shard", "prepare",
    "presets", "tokenizer_fingerprint", "tokenizer_info",
]
