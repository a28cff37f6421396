"""Streaming readers for raw inputs (JSONL, Parquet, plain text; .gz for JSONL/text) and the paper's formatting.

`read_items` frames a file into raw items one at a time (constant memory whatever the file size); `item_to_doc`
turns an item into `Doc(text, response_spans, where)` (prepare runs it in the tokenizer workers, so JSON parsing
scales with them). Formatting (SPEC section 2): chat turns are prefixed "User:" / "Assistant:" ("System:" for system
turns) and joined by newlines; question and answer are joined by a single newline; no chat template.
`response_spans` are the character ranges of the assistant turns / answers, used for the optional prompt loss
mask. Bad records raise BadInputError naming file and line (Parquet: row), unless the caller counts and skips
them (`--skip-bad`).

Plain text files: documents are separated by a line holding only a form feed ("\\f"); a file without one is a
single document.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

FORMATS = ("text", "chat", "qa")
TEXT_FIELDS = ("text", "content")
CHAT_FIELDS = ("messages", "conversations", "conversation")
QUESTION_FIELDS = ("question", "problem", "prompt", "instruction", "input")
ANSWER_FIELDS = ("answer", "solution", "response", "output", "completion")
_ROLE_PREFIX = {"user": "User:", "human": "User:", "assistant": "Assistant:", "gpt": "Assistant:",
                "model": "Assistant:", "bot": "Assistant:", "system": "System:"}


class BadInputError(ValueError):
    """A record that cannot become a document. `reason` is a short key counted under --skip-bad."""

    def __init__(self, path: str, line: int, reason: str, detail: str):
        self.path, self.line, self.reason, self.detail = path, line, reason, detail
        super().__init__(f"{path}:{line}: {detail} (pass --skip-bad to skip and count such records)")

    def __reduce__(self):  # raised in tokenizer worker processes, re-raised in the parent
        return BadInputError, (self.path, self.line, self.reason, self.detail)


@dataclass
class Doc:
    text: str
    response_spans: list[tuple[int, int]] = field(default_factory=list)
    where: tuple[str, int] = ("", 0)


def _first(rec: dict, names: tuple[str, ...]):
    for n in names:
        if n in rec and rec[n] is not None:
            return n, rec[n]
    return None, None


def format_record(rec, fmt: str, path: str, line: int, text_field: str | None = None) -> Doc:
    """Turn one parsed record into a Doc following the paper's formatting rules."""
    if not isinstance(rec, dict):
        raise BadInputError(path, line, "not_object", f"expected a JSON object, got {type(rec).__name__}")
    if fmt == "text":
        names = (text_field,) if text_field else TEXT_FIELDS
        _, text = _first(rec, names)
        if text is None:
            raise BadInputError(path, line, "missing_field", f"missing field {' / '.join(names)!s}")
        if not isinstance(text, str):
            raise BadInputError(path, line, "bad_field", f"field {names[0]!r} is not a string")
        return _nonempty(Doc(text, [], (path, line)))
    if fmt == "qa":
        qn, q = _first(rec, QUESTION_FIELDS)
        an, a = _first(rec, ANSWER_FIELDS)
        if q is None or a is None:
            missing = QUESTION_FIELDS if q is None else ANSWER_FIELDS
            raise BadInputError(path, line, "missing_field", f"missing field {' / '.join(missing)}")
        if not isinstance(q, str) or not isinstance(a, str):
            raise BadInputError(path, line, "bad_field", f"fields {qn!r} and {an!r} must be strings")
        text = q + "\n" + a
        return _nonempty(Doc(text, [(len(q) + 1, len(text))] if a else [], (path, line)))
    if fmt == "chat":
        _, turns = _first(rec, CHAT_FIELDS)
        if turns is None:
            raise BadInputError(path, line, "missing_field", f"missing field {' / '.join(CHAT_FIELDS)}")
        if not isinstance(turns, list):
            raise BadInputError(path, line, "bad_field", "chat turns must be a list")
        parts, spans, pos = [], [], 0
        for k, t in enumerate(turns):
            if not isinstance(t, dict):
                raise BadInputError(path, line, "bad_field", f"turn {k} is not an object")
            role = t.get("role", t.get("from"))
            content = t.get("content", t.get("value"))
            prefix = _ROLE_PREFIX.get(str(role).lower()) if role is not None else None
            if prefix is None or not isinstance(content, str):
                raise BadInputError(path, line, "bad_field",
                                    f"turn {k} needs role in {sorted(_ROLE_PREFIX)} and string content")
            piece = f"{prefix} {content}"
            if prefix == "Assistant:":
                # The loss span starts at the space after the prefix: BPE glues that space to the first word.
                spans.append((pos + len(prefix), pos + len(piece)))
            parts.append(piece)
            pos += len(piece) + 1
        return _nonempty(Doc("\n".join(parts), spans, (path, line)))
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def _nonempty(doc: Doc) -> Doc:
    if not doc.text.strip():
        raise BadInputError(doc.where[0], doc.where[1], "empty", "empty document")
    return doc


class HashingReader(io.RawIOBase):
    """Wraps a binary file and hashes every byte read (source hashes come for free while streaming)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, b):
        n = self.f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
        return n

    def close(self):
        self.f.close()
        super().close()


def _open_lines(path: str, hasher: HashingReader | None) -> Iterator[tuple[int, bytes]]:
    raw = hasher if hasher is not None else open(path, "rb")
    stream = io.BufferedReader(raw, 1 << 20)
    if path.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream)
    with stream:
        for n, line in enumerate(stream, 1):
            yield n, line


def _decode(path: str, n: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(path, n, "not_utf8", f"not valid UTF-8 (byte {line[e.start]:#04x} at column "
                                                 f"{e.start + 1})") from None


def input_kind(path: str) -> str:
    p = path[:-3] if path.endswith(".gz") else path
    if p.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if p.endswith(".parquet"):
        return "parquet"
    return "text"


def read_items(path: str | os.PathLike, fmt: str, *, hasher_out: dict | None = None,
               skipped: dict | None = None) -> Iterator[tuple]:
    """Frame one input file into raw items, streaming, with as little work as possible (this runs in the
    parent of the tokenizer workers): ("jsonl", path, line, raw bytes), ("rec", path, row, dict) for Parquet,
    ("doc", path, first line, text) for plain text. `item_to_doc` (run in the workers) parses and formats.
    Plain-text decoding errors are raised (or counted in `skipped`) here. If `hasher_out` is given, its
    "sha256" key is set to the file's hash once the file has been read to the end."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    path = str(path)
    kind = input_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        row = 0
        # Record batches keep memory bounded by the batch, not the file.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                row += 1
                yield "rec", path, row, rec
        if hasher_out is not None:
            from prism_fast.data.shards import file_sha256
            hasher_out["sha256"] = file_sha256(path)
        return
    if kind == "text" and fmt != "text":
        raise ValueError(f"{path}: plain text input only supports --format text (got {fmt!r}); use JSONL or "
                         "Parquet for chat / qa records")
    hasher = HashingReader(open(path, "rb"))
    if kind == "jsonl":
        for n, raw in _open_lines(path, hasher):
            if raw.strip():  # blank lines in JSONL are layout, not records
                yield "jsonl", path, n, raw
    else:
        buf: list[str] = []
        start, bad = 1, False
        for n, raw in _open_lines(path, hasher):
            line = count_or_raise(lambda: _decode(path, n, raw), skipped)
            if line is None:
                bad = True  # a document with an undecodable line is dropped whole (counted once per line)
                continue
            if line.rstrip("\r\n") == "\f":
                if not bad:
                    yield "doc", path, start, "".join(buf)
                buf, start, bad = [], n + 1, False
                continue
            buf.append(line)
        if (buf or start == 1) and not bad:
            yield "doc", path, start, "".join(buf)
    if hasher_out is not None:
        hasher_out["sha256"] = hasher.sha.hexdigest()


def item_to_doc(item: tuple, fmt: str, text_field: str | None = None) -> Doc:
    """Parse and format one item of `read_items`; raises BadInputError naming file and line."""
    kind, path, n, payload = item
    if kind == "jsonl":
        return format_record(_parse_json(path, n, payload), fmt, path, n, text_field)
    if kind == "rec":
        return format_record(_decode_row(path, n, payload), fmt, path, n, text_field)
    return _nonempty(Doc(payload, [], (path, n)))


def item_size(item: tuple) -> int:
    """Rough size in bytes / characters, for batching."""
    payload = item[3]
    if isinstance(payload, dict):
        return sum(len(v) for v in payload.values() if isinstance(v, (str, bytes)))
    return len(payload)


def read_docs(path: str | os.PathLike, fmt: str, *, text_field: str | None = None,
              hasher_out: dict | None = None, skipped: dict | None = None) -> Iterator[Doc]:
    """Yield the documents of one input file in this process, streaming. Raises BadInputError on a bad record,
    or, when `skipped` (a dict reason -> count) is given, counts it there and goes on."""
    for item in read_items(path, fmt, hasher_out=hasher_out, skipped=skipped):
        doc = count_or_raise(lambda: item_to_doc(item, fmt, text_field), skipped)
        if doc is not None:
            yield doc


def count_or_raise(fn, skipped: dict | None):
    """Run fn(); on BadInputError count it in `skipped` (return None) or re-raise."""
    try:
        return fn()
    except BadInputError as e:
        if skipped is None:
            raise
        skipped[e.reason] = skipped.get(e.reason, 0) + 1
        return None


def _parse_json(path: str, n: int, raw: bytes):
    text = _decode(path, n, raw)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(path, n, "bad_json", f"malformed JSON ({e.msg} at column {e.colno})") from None


def _decode_row(path: str, row: int, rec: dict) -> dict:
    # Binary columns may hold arbitrary bytes; string columns were validated as UTF-8 by Arrow already.
    return {k: _decode(path, row, bytes(v)) if isinstance(v, (bytes, bytearray)) else v for k, v in rec.items()}


def source_files(inputs: list[str]) -> list[str]:
    """Expand directories (sorted, recursive) into input files; reject missing paths."""
    out = []
    for p in inputs:
        pp = Path(p)
        if pp.is_dir():
            out.extend(str(f) for f in sorted(pp.rglob("*")) if f.is_file() and not f.name.startswith("."))
        elif pp.is_file():
            out.append(str(pp))
        else:
            raise ValueError(f"input {p!r} does not exist")
    if not out:
        raise ValueError(f"no input files found in {inputs}")
    return out
