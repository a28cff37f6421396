"""Token shard format: one directory per source, written atomically, opened with memory maps.

    DIR/tokens.bin   token ids, little-endian uint16 (vocabulary <= 65536) or uint32, documents back to back
    DIR/tokens.idx   8-byte magic b"PRSMIDX1", then uint64 document offsets [num_docs + 1] (first 0, last num_tokens)
    DIR/tokens.mask  optional uint8 [num_tokens]: 1 where the token is a response token (chat / qa formats);
                     used by loss_mask_prompt. Absent for plain text (every token is a response token).
    DIR/meta.json    written LAST: tokenizer fingerprint, dtype, counts, source files + sha256, skipped-bad counts,
                     and `checksums`: {file: {"size", "crc32"}} of the three data files (computed while writing)

Unusual: a shard is complete only when meta.json exists and its counts match the file sizes. The writer first
removes an old meta.json, streams into `*.partial` files, renames them, then writes meta.json through a rename,
so a crash at any point leaves a directory that `open_shard` rejects instead of a half-written shard that looks
complete. `open_shard` also rejects truncated files and non-monotonic offsets, naming the file (cheap: sizes and
the index only); `verify_shard` additionally reads every byte against the CRC-32s in meta.json, so a tampered or
bit-rotted token file is refused at the start of a run instead of surfacing mid-run as garbage tokens. Shards
written before checksums existed get the cheap checks only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism_fast.checkpoint.integrity import file_crc32

IDX_MAGIC = b"PRSMIDX1"
FORMAT_VERSION = 1
_FILES = ("tokens.bin", "tokens.idx", "tokens.mask")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


class ShardWriter:
    """Streams documents into DIR; `close(meta)` makes the shard visible, `abort()` removes the partial files.

    add(ids uint32 [T], doc_lens int64 [D], mask uint8 [T] or None): D documents whose tokens are concatenated.
    """

    def __init__(self, out_dir: str | os.PathLike, dtype: np.dtype, with_mask: bool):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # An old complete shard must stop looking complete before any byte of the new one is written.
        (self.dir / "meta.json").unlink(missing_ok=True)
        for name in _FILES:
            (self.dir / name).unlink(missing_ok=True)
        self.dtype = np.dtype(dtype)
        self.with_mask = with_mask
        self._bin = open(self.dir / "tokens.bin.partial", "wb")
        self._idx = open(self.dir / "tokens.idx.partial", "wb")
        self._mask = open(self.dir / "tokens.mask.partial", "wb") if with_mask else None
        self._crc = dict.fromkeys(_FILES, 0)  # running CRC-32 of the bytes written to each file
        self._write("tokens.idx", IDX_MAGIC + np.zeros(1, dtype="<u8").tobytes())
        self.num_tokens = 0
        self.num_docs = 0
        self.max_len = 0

    def add(self, ids: np.ndarray, doc_lens: np.ndarray, mask: np.ndarray | None = None) -> None:
        if len(doc_lens) == 0:
            return
        if ids.size and int(ids.max()) >= np.iinfo(self.dtype).max + 1:
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}")
        self._write("tokens.bin", ids.astype(self.dtype.newbyteorder("<"), copy=False))
        ends = self.num_tokens + np.cumsum(doc_lens, dtype=np.int64)
        self._write("tokens.idx", ends.astype("<u8"))
        if self._mask is not None:
            self._write("tokens.mask", np.asarray(mask, dtype=np.uint8))
        self.num_tokens = int(ends[-1])
        self.num_docs += len(doc_lens)
        self.max_len = max(self.max_len, int(np.max(doc_lens)))

    def _write(self, name: str, data) -> None:
        buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
        self._crc[name] = zlib.crc32(buf, self._crc[name])
        {"tokens.bin": self._bin, "tokens.idx": self._idx, "tokens.mask": self._mask}[name].write(buf)

    def close(self, meta: dict) -> dict:
        """Flush, fsync, rename the data files, then write meta.json atomically. Returns the full meta."""
        for f in (self._bin, self._idx, self._mask):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        for name in _FILES:
            part = self.dir / (name + ".partial")
            if part.exists():
                os.replace(part, self.dir / name)
        checksums = {name: {"size": (self.dir / name).stat().st_size, "crc32": f"{self._crc[name]:08x}"}
                     for name in _FILES if (self.dir / name).exists()}
        meta = dict(meta, format_version=FORMAT_VERSION, dtype=self.dtype.name, num_docs=self.num_docs,
                    num_tokens=self.num_tokens, max_doc_len=self.max_len, has_mask=self.with_mask,
                    checksums=checksums,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        tmp = self.dir / "meta.json.partial"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "meta.json")
        return meta

    def abort(self) -> None:
        for f in (self._bin, self._idx, self._mask):
            if f is not None and not f.closed:
                f.close()
        for name in _FILES:
            (self.dir / (name + ".partial")).unlink(missing_ok=True)


@dataclass
class Shard:
    """A complete shard, memory-mapped. `doc(i)` -> token ids of document i (a numpy view, no copy)."""
    path: Path
    meta: dict
    tokens: np.ndarray   # [num_tokens] uint16/uint32, memory-mapped
    offsets: np.ndarray  # [num_docs + 1] uint64, memory-mapped
    mask: np.ndarray | None  # [num_tokens] uint8, memory-mapped, or None

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    def doc_lens(self) -> np.ndarray:
        """int64 [num_docs]."""
        return np.diff(self.offsets).astype(np.int64)


def open_shard(path: str | os.PathLike, expected_fingerprint: str | None = None) -> Shard:
    """Open and validate a shard directory (see module docstring). Raises ValueError naming the bad file."""
    d = Path(path)
    meta_path = d / "meta.json"
    if not d.is_dir():
        raise ValueError(f"shard directory {d} does not exist; make it with `python -m prism_fast.data prepare "
                         f"--input FILES --tokenizer TOK --out {d}`")
    if not meta_path.exists():
        partial = sorted(p.name for p in d.glob("*.partial")) if d.is_dir() else []
        hint = f" (found partial files {partial}: a prepare run crashed or is running)" if partial else ""
        raise ValueError(f"{d}: not a complete token shard, {meta_path.name} is missing{hint}; run "
                         f"`python -m prism_fast.data prepare ... --out {d}` again")
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        n_tok, n_docs = int(meta["num_tokens"]), int(meta["num_docs"])
        fp = meta["tokenizer"]["fingerprint"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: unreadable shard metadata ({e!r}); re-run prepare") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}; "
                         "re-run prepare")
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise ValueError(f"{meta_path}: shard was tokenized with another tokenizer ({meta['tokenizer'].get('name')}, "
                         f"fingerprint {fp[:12]}) than this run's (fingerprint {expected_fingerprint[:12]}); "
                         "re-run prepare with the run's tokenizer, or set --data.tokenizer to the one the shard "
                         "was made with")
    bin_path, idx_path, mask_path = d / "tokens.bin", d / "tokens.idx", d / "tokens.mask"
    _check_size(bin_path, n_tok * dtype.itemsize)
    _check_size(idx_path, len(IDX_MAGIC) + 8 * (n_docs + 1))
    with open(idx_path, "rb") as f:
        if f.read(len(IDX_MAGIC)) != IDX_MAGIC:
            raise ValueError(f"{idx_path}: bad magic, not a prism_fast index file")
    tokens = (np.memmap(bin_path, dtype=dtype.newbyteorder("<"), mode="r") if n_tok
              else np.zeros(0, dtype=dtype))
    offsets = np.memmap(idx_path, dtype="<u8", mode="r", offset=len(IDX_MAGIC), shape=(n_docs + 1,))
    if offsets[0] != 0 or offsets[-1] != n_tok or (n_docs and np.any(np.diff(offsets.astype(np.int64)) <= 0)):
        raise ValueError(f"{idx_path}: document offsets are corrupt (must rise strictly from 0 to {n_tok}); "
                         "re-run prepare")
    mask = None
    if meta.get("has_mask"):
        _check_size(mask_path, n_tok)
        mask = np.memmap(mask_path, dtype=np.uint8, mode="r") if n_tok else np.zeros(0, np.uint8)
    # Plain ndarray views of the maps (the map stays alive as their base): np.memmap's Python-level
    # __getitem__ / __array_finalize__ cost more than the copy of a short document slice.
    return Shard(d, meta, tokens.view(np.ndarray), offsets.view(np.ndarray),
                 None if mask is None else mask.view(np.ndarray))


def verify_shard(path: str | os.PathLike, expected_fingerprint: str | None = None) -> Shard:
    """open_shard's checks plus every data file's bytes against the CRC-32 recorded in meta.json (read once, in
    8 MiB chunks). Raises ValueError naming the file whose contents changed since prepare wrote it."""
    shard = open_shard(path, expected_fingerprint)
    for name, want in sorted(shard.meta.get("checksums", {}).items()):
        f = Path(path) / name
        _, crc = file_crc32(f)
        if crc != want["crc32"]:
            raise ValueError(f"{f}: contents changed since prepare wrote it (CRC-32 {crc}, meta.json records "
                             f"{want['crc32']}: tampered or corrupted); re-run prepare for {Path(path)}")
    return shard


def _check_size(path: Path, expected: int) -> None:
    if not path.exists():
        raise ValueError(f"{path}: missing (meta.json lists it); re-run prepare")
    got = path.stat().st_size
    if got != expected:
        raise ValueError(f"{path}: size {got} bytes, expected {expected} from meta.json (truncated or "
                         "overwritten); re-run prepare")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
