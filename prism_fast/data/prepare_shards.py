"""Raw files -> token shard (`python -m prism_fast.data prepare`).

Pipeline: the parent process streams raw records out of the inputs (readers.read_items: lines, Parquet rows),
groups them into batches and hands them to N worker processes that parse, format (readers.item_to_doc) and run
the fast HF tokenizer (Rust `tokenizers`, rebuilt in each worker from
its JSON, so workers never re-parse a GGUF); results come back in submission order and are appended to the shard,
so N workers write byte-identical shards to 1 worker. With workers=1 the tokenizer runs in this process and
`encode_batch` may use Rust threads (TOKENIZERS_PARALLELISM); with workers > 1 each worker is single-threaded
and the parallelism is across processes (JSON parsing, formatting and the loss-mask offsets are Python work
that Rust threads do not parallelize; in workers it is spread over the processes). At most 2 * N batches are in flight: memory stays constant
whatever the input size (Pool.imap would read the whole input ahead).

Each document gets the tokenizer's EOS token appended (no BOS, no chat template). For chat / qa formats a
`tokens.mask` marks response tokens (any token overlapping an assistant turn / answer, plus the EOS).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from prism_fast.data.readers import (FORMATS, BadInputError, count_or_raise, input_kind, item_size, item_to_doc,
                                     read_items, source_files)
from prism_fast.data.shards import _FILES as _SHARD_FILES
from prism_fast.data.shards import ShardWriter, token_dtype
from prism_fast.entry import UserError

_BATCH_DOCS = 256
_BATCH_CHARS = 1 << 18  # ~60k tokens: keeps the transient Encoding objects (~100 B/token) small


# ------------------------------------------------------------------------------------------------ tokenizers
@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str, cache: bool = True):
    """HF fast tokenizer from a directory (tokenizer.json + config) or from the tokenizer inside a .gguf file.

    Converting a GGUF tokenizer takes seconds (transformers parses the GGUF vocab and merges in Python), so with
    cache=True the converted tokenizer is saved once under $PRISM_CACHE_DIR (default ~/.cache/prism_fast),
    keyed by the file's path, size and mtime and the transformers version, and later loads read that directory.
    """
    import transformers

    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        cached = _gguf_cache_dir(p) if cache else None
        if cached is not None and (cached / "tokenizer.json").is_file():
            tok = transformers.AutoTokenizer.from_pretrained(str(cached))
        else:
            tok = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            if cached is not None:
                _save_atomically(tok, cached)
        tok.name_or_path = str(p)  # meta.json names the GGUF file, not the parent directory or the cache
    elif p.is_dir():
        tok = _tokenizer_from_dir(p)
    else:
        raise ValueError(f"--tokenizer {path!r} must be an HF tokenizer directory or a .gguf file")
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: only fast (Rust) tokenizers are supported")
    return tok


def _tokenizer_from_dir(p: Path):
    """AutoTokenizer of an HF directory; any failure (no tokenizer files, unparsable tokenizer.json: transformers
    raises several exception types with multi-line messages) becomes one line naming the directory."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 (transformers' failures here are all "this is not a tokenizer")
        why = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"--tokenizer {p}: not a loadable HF tokenizer directory ({type(e).__name__}: {why}); "
                        f"pass a directory holding tokenizer.json (or a .gguf file)") from e


def _gguf_cache_dir(p: Path) -> Path:
    import transformers

    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode())
    root = Path(os.environ.get("PRISM_CACHE_DIR", Path.home() / ".cache" / "prism_fast"))
    return root / "gguf_tokenizers" / key.hexdigest()[:24]


def _save_atomically(tok, dst: Path) -> None:
    """Save into a temporary sibling, then rename: concurrent ranks / test workers never read a half-written
    cache entry (a lost rename race just leaves the winner's identical copy)."""
    import shutil
    import tempfile

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp-"))
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dst)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:  # read-only home etc.: the cache is an optimization only
        pass


def tokenizer_info(tokenizer, eos_token: str | None = None) -> dict:
    """Name, vocab size, EOS id and a fingerprint that is equal for equal tokenizers however they were loaded
    (GGUF or directory): sha256 over the model (vocab + merges), added tokens, normalizer and pre-tokenizer."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(str(tokenizer))
    _, fp = _serialized(tokenizer)
    eos = eos_token if eos_token is not None else tokenizer.eos_token
    eos_id = tokenizer.convert_tokens_to_ids(eos) if eos is not None else None
    if eos_id is None or eos_id == tokenizer.unk_token_id and eos != tokenizer.unk_token:
        raise ValueError(f"tokenizer has no EOS token {eos!r}; pass --eos-token")
    return {"name": str(getattr(tokenizer, "name_or_path", "")), "fingerprint": fp, "vocab_size": len(tokenizer),
            "eos_token": eos, "eos_token_id": int(eos_id)}


def _serialized(tokenizer) -> tuple[str, str]:
    """(backend JSON, fingerprint), cached on the tokenizer object: serializing + hashing a 50k-token BPE takes
    about a second."""
    cached = getattr(tokenizer, "_prism_serialized", None)
    if cached is None:
        tok_json = tokenizer.backend_tokenizer.to_str()
        spec = json.loads(tok_json)
        core = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer")}
        core["added_tokens"] = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
        fp = hashlib.sha256(json.dumps(core, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
        cached = (tok_json, fp)
        tokenizer._prism_serialized = cached
    return cached


def tokenizer_fingerprint(path_or_tokenizer) -> str:
    """The fingerprint stored in meta.json for shards made with this tokenizer (compare before training)."""
    return tokenizer_info(path_or_tokenizer)["fingerprint"]


# ----------------------------------------------------------------------------------------------- encode batch
_WORKER: dict = {}


def _init_worker(tok_json: str, eos_id: int, single_thread: bool = False) -> None:
    import tokenizers

    if single_thread:
        # One tokenizer process per core: Rust-side (rayon) threads would only oversubscribe the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tok"] = tokenizers.Tokenizer.from_str(tok_json)
    _WORKER["eos"] = eos_id


def _process(items: list[tuple], fmt: str, text_field: str | None, skip_bad: bool):
    """Worker side: parse + format items (readers.item_to_doc), then tokenize. Returns (ids uint32 [T],
    lens int64 [D], mask uint8 [T] or None, skipped {reason: count}); raises BadInputError unless skip_bad."""
    skipped: dict | None = {} if skip_bad else None
    docs = [count_or_raise(lambda: item_to_doc(it, fmt, text_field), skipped) for it in items]
    docs = [d for d in docs if d is not None]
    with_mask = fmt in ("chat", "qa")
    ids, lens, mask = _encode([d.text for d in docs], [d.response_spans for d in docs] if with_mask else None)
    return ids, lens, mask, skipped or {}


def _encode(texts: list[str], spans: list[list[tuple[int, int]]] | None):
    """texts: D documents -> (ids uint32 [T], lens int64 [D], mask uint8 [T] or None); EOS appended to each."""
    tok, eos = _WORKER["tok"], _WORKER["eos"]
    encs = tok.encode_batch(texts, add_special_tokens=False) if texts else []
    lens = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    ids = np.empty(int(lens.sum()), dtype=np.uint32)
    mask = np.ones(len(ids), dtype=np.uint8) if spans is not None else None
    pos = 0
    for k, e in enumerate(encs):
        n = len(e.ids)
        ids[pos:pos + n] = e.ids
        ids[pos + n] = eos
        if mask is not None and n:
            off = np.asarray(e.offsets, dtype=np.int64).reshape(n, 2)
            resp = np.zeros(n, dtype=bool)
            for s, t in spans[k]:
                resp |= (off[:, 1] > s) & (off[:, 0] < t)
            mask[pos:pos + n] = resp
        pos += n + 1
    return ids, lens, mask


# ------------------------------------------------------------------------------------------------------ driver
def prepare(inputs: list[str], tokenizer: str, out_dir: str, *, domain: str | None = None, fmt: str = "text",
            workers: int = 1, skip_bad: bool = False, text_field: str | None = None,
            eos_token: str | None = None, progress: bool | None = None) -> dict:
    """Tokenize `inputs` into the shard directory `out_dir`; returns its meta.json dict.

    domain: stored in meta (default: the output directory name). fmt: "text" | "chat" | "qa".
    workers: tokenizer processes (1 = in this process). skip_bad: count and skip bad records instead of failing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    files = source_files(list(inputs))
    tok = load_tokenizer(str(tokenizer))
    info = tokenizer_info(tok, eos_token)
    tok_json, _ = _serialized(tok)
    with_mask = fmt in ("chat", "qa")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory: name a new or existing shard directory")
    made_from = _first_missing(out.parent)  # a failed run removes the directories it made, no others
    stage = _staging_dir(out)
    writer = ShardWriter(stage, token_dtype(info["vocab_size"]), with_mask)
    skipped: dict | None = {} if skip_bad else None
    sources = []
    total_bytes = sum(os.path.getsize(f) for f in files)
    bar = _progress(total_bytes, progress, Path(out_dir).name)
    pool = None
    try:
        if workers > 1:
            ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok_json, info["eos_token_id"], True))
        else:
            _init_worker(tok_json, info["eos_token_id"])
        pending: collections.deque = collections.deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                res, nbytes = pending.popleft()
                ids, lens, mask, bad = res.get() if pool is not None else res
                writer.add(ids, lens, mask)
                for reason, count in bad.items():
                    skipped[reason] = skipped.get(reason, 0) + count
                bar.update(nbytes)

        def submit(items, nbytes) -> None:
            args = (items, fmt, text_field, skip_bad)
            pending.append((pool.apply_async(_process, args) if pool is not None else _process(*args), nbytes))
            drain(2 * workers)

        for f in files:
            h: dict = {}
            items, size = [], 0
            for item in read_items(f, fmt, hasher_out=h, skipped=skipped):
                items.append(item)
                size += item_size(item)
                if len(items) >= _BATCH_DOCS or size >= _BATCH_CHARS:
                    submit(items, size)
                    items, size = [], 0
            if items:
                submit(items, size)
            sources.append({"path": os.path.abspath(f), "kind": input_kind(f), "bytes": os.path.getsize(f),
                            "sha256": h.get("sha256")})
        drain(0)
        if writer.num_docs == 0:
            raise ValueError(f"no documents in {files} (skipped: {skipped}); nothing written")
        meta = {"tokenizer": info, "format": fmt, "domain": domain or Path(out_dir).name, "sources": sources,
                "skipped_bad": skipped or {}}
        meta = writer.close(meta)
        _publish(stage, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(stage, ignore_errors=True)
        if made_from is not None:
            _remove_empty_dirs(out.parent, made_from)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    if skipped:
        print(f"prepare: skipped bad records {skipped} ({sum(skipped.values())} total)", file=sys.stderr)
    return meta


def _staging_dir(out: Path) -> Path:
    """A fresh hidden directory beside `out` (same file system, so publishing is a rename). The shard is written
    there whole; until it is complete the previous contents of `out` are not touched, so a bad record, a full
    disk or a kill mid-prepare never costs the last good shard."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; the published directory gets mkdir's usual mode
    return stage


def _publish(stage: Path, out: Path) -> None:
    """Move the complete shard in `stage` to `out`. A new `out` is one rename. An existing directory keeps its
    other files: its meta.json goes first (the old shard stops looking complete), then each data file is
    replaced (a stale tokens.mask removed), meta.json last, so an interruption leaves a directory that
    open_shard refuses, never a mix that looks complete."""
    if not out.exists():
        os.rename(stage, out)
        return
    (out / "meta.json").unlink(missing_ok=True)
    for name in _SHARD_FILES:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    os.replace(stage / "meta.json", out / "meta.json")
    stage.rmdir()


def _first_missing(d: Path) -> Path | None:
    """The outermost directory of d's path that does not exist yet (None if d exists)."""
    if d.exists():
        return None
    while not d.parent.exists():
        d = d.parent
    return d


def _remove_empty_dirs(d: Path, top: Path) -> None:
    """Remove d and its parents up to `top` (the ones prepare created) while they are empty."""
    try:
        while not any(d.iterdir()):
            d.rmdir()
            if d == top:
                return
            d = d.parent
    except OSError:
        pass


def _progress(total: int, enabled: bool | None, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"prepare {name}", file=sys.stderr,
                disable=(None if enabled is None else not enabled), mininterval=1.0)


__all__ = ["BadInputError", "load_tokenizer", "prepare", "tokenizer_fingerprint", "tokenizer_info"]
