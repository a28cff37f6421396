"""Streaming tensor readers for HF safetensors checkpoints (single file, directory, sharded with an index) and
torch.distributed.checkpoint (DCP) directories.

What is unusual: the safetensors reader does NOT use safetensors' mmap. Pages touched through an mmap count in
the process RSS until the file is closed, so comparing two 24B checkpoints through mmap would show ~2x 48 GB of
resident memory. Instead we parse the 8-byte-length + JSON header ourselves and `readinto` a fresh buffer with
plain file reads: a row range of a tensor is one contiguous byte range (row-major, little-endian), so we read
exactly the rows asked for. Peak memory is then the buffers we allocate, nothing else.

DCP checkpoints are read one tensor at a time with `torch.distributed.checkpoint.load(..., no_dist=True)` into a
plain tensor of the global shape (no process group needed); DCP resharding reassembles FSDP2 shards. A DCP
tensor cannot be read by row ranges here, so it is always read whole.

Readers hold only paths and open files lazily, so they pickle cheaply to worker processes.
"""
from __future__ import annotations

import json
import os
import re
import struct
from abc import ABC, abstractmethod
from pathlib import Path

import torch

# safetensors dtype tags -> torch dtypes (the subset torch can represent)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# First components of DCP keys that belong to training state, not to the model.
_DCP_NON_MODEL = ("optimizer", "optim", "lr_scheduler", "scheduler", "lr_schedulers", "dataloader", "data_loader",
                  "loader", "train_state", "rng", "rng_state", "step", "extra", "metrics")


class CheckpointReader(ABC):
    """Uniform read-only view of a checkpoint: names, shapes, dtypes, and reads of whole tensors or row ranges.

    read(name, r0, r1) -> tensor of rows [r0, r1) along dim 0 in the stored dtype (whole tensor when r0/r1 are
    None). `row_sliceable` says whether partial reads avoid reading the whole tensor. `out` (uint8) lets a caller
    reuse one buffer across reads where the format allows it.
    """

    row_sliceable = False
    path: str

    @abstractmethod
    def names(self) -> list[str]:
        ...

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        ...

    @abstractmethod
    def dtype(self, name: str) -> torch.dtype:
        ...

    @abstractmethod
    def read(self, name: str, r0: int | None = None, r1: int | None = None, out: torch.Tensor | None = None
             ) -> torch.Tensor:
        ...

    def nbytes(self, name: str) -> int:
        n = 1
        for s in self.shape(name):
            n *= s
        return n * self.dtype(name).itemsize

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self.names())

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


def _read_st_header(file: str) -> tuple[dict, int]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class SafetensorsReader(CheckpointReader):
    """One or many .safetensors files viewed as one name space (HF sharded layout). Plain reads, no mmap."""

    row_sliceable = True

    def __init__(self, path: str, files: list[str]):
        self.path = str(path)
        self._entries: dict[str, tuple[str, int, torch.dtype, tuple[int, ...]]] = {}
        for file in files:
            header, data_start = _read_st_header(file)
            for name, info in header.items():
                if info["dtype"] not in _ST_DTYPES:
                    raise ValueError(f"{file}: tensor {name} has dtype {info['dtype']} that torch cannot hold; "
                                     "convert the checkpoint to bf16/fp16/fp32 first")
                if name in self._entries:
                    raise ValueError(f"tensor {name} appears in two shards ({self._entries[name][0]} and {file})")
                start = data_start + info["data_offsets"][0]
                self._entries[name] = (file, start, _ST_DTYPES[info["dtype"]], tuple(info["shape"]))
        self._files: dict[str, object] = {}

    def names(self):
        return list(self._entries)

    def shape(self, name):
        return self._entries[name][3]

    def dtype(self, name):
        return self._entries[name][2]

    def read(self, name, r0=None, r1=None, out=None):
        """out: optional uint8 buffer (>= the bytes asked) to read into, reused by the caller across reads."""
        file, start, dtype, shape = self._entries[name]
        if not shape:  # scalar
            r0, r1, rows_shape = 0, 1, ()
        else:
            r0 = 0 if r0 is None else r0
            r1 = shape[0] if r1 is None else r1
            rows_shape = (r1 - r0, *shape[1:])
        row_bytes = dtype.itemsize
        for s in shape[1:]:
            row_bytes *= s
        n = (r1 - r0) * row_bytes
        buf = torch.empty(n, dtype=torch.uint8) if out is None else out[:n]
        f = self._files.get(file)
        if f is None:
            f = self._files[file] = open(file, "rb", buffering=0)
        f.seek(start + r0 * row_bytes)
        view, got = memoryview(buf.numpy()), 0
        while got < n:  # one read() returns at most ~2 GiB on Linux: loop
            k = f.readinto(view[got:])
            if not k:
                raise ValueError(f"{file}: truncated data for tensor {name} (read {got} of {n} bytes)")
            got += k
        return buf.view(dtype).reshape(rows_shape)

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self):  # file handles stay behind; the worker reopens lazily
        return {**self.__dict__, "_files": {}}


class DCPReader(CheckpointReader):
    """A torch.distributed.checkpoint directory (has a `.metadata` file). Model tensors only.

    prefix: "auto" strips a leading "model." when the model state was saved nested under a "model" key (detected
    by keys like "model.model.layers.0..." or "model.lm_head.weight") and drops training-state keys (optimizer,
    lr_scheduler, dataloader, ...); a string keeps only keys starting with it and strips it; "" keeps every key.
    With a trainer `model_config.json` beside it saying tie_word_embeddings, lm_head.weight (the embedding under a
    second name) is left out, as HF exports do.
    """

    def __init__(self, path: str, prefix: str = "auto"):
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = str(path)
        meta = FileSystemReader(self.path).read_metadata()
        tensors = {k: v for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        if prefix == "auto":
            nested = any(re.match(r"model\.(model|backbone|lm_head)\.", k) for k in tensors)
            prefix = "model." if nested else ""
            tensors = {k: v for k, v in tensors.items() if k.split(".", 1)[0] not in _DCP_NON_MODEL}
        self._prefix = prefix
        self._entries = {k[len(prefix):]: (k, v.properties.dtype, tuple(v.size))
                         for k, v in tensors.items() if k.startswith(prefix)}
        # Tied LM head: the trainer's state dict holds it as a second name of the embedding; HF exports omit it.
        # Drop it too, so DCP and HF checkpoints of the same weights give the same aggregates.
        cfg_file = Path(self.path) / "model_config.json"
        if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("tie_word_embeddings"):
            self._entries.pop("lm_head.weight", None)
        self._fs_reader = None
        if not self._entries:
            raise ValueError(f"{path}: no model tensors found in the DCP checkpoint (prefix={prefix!r}); "
                             f"pass the prefix under which the model state was saved")

    def names(self):
        return list(self._entries)

    def shape(self, name):
        return self._entries[name][2]

    def dtype(self, name):
        return self._entries[name][1]

    def read(self, name, r0=None, r1=None, out=None):  # out ignored: DCP allocates whole tensors
        import warnings

        import torch.distributed.checkpoint as dcp

        key, dtype, shape = self._entries[name]
        out = torch.empty(shape, dtype=dtype)
        if self._fs_reader is None:
            self._fs_reader = _cached_metadata_reader(self.path)
        with warnings.catch_warnings():  # "no process group, loading as a single process": intended here
            warnings.simplefilter("ignore")
            dcp.load({key: out}, storage_reader=self._fs_reader, no_dist=True)
        if r0 is None and r1 is None:
            return out
        return out[r0:r1]

    def __getstate__(self):  # the storage reader stays behind; the worker makes its own
        return {**self.__dict__, "_fs_reader": None}


def _cached_metadata_reader(path):
    """A FileSystemReader that unpickles `.metadata` once, not once per tensor (dcp.load reads it on every call;
    with optimizer state that file holds thousands of entries)."""
    from torch.distributed.checkpoint import FileSystemReader

    class Reader(FileSystemReader):
        _metadata = None

        def read_metadata(self, *args, **kwargs):
            if self._metadata is None:
                self._metadata = super().read_metadata(*args, **kwargs)
            return self._metadata

    return Reader(path)


def open_checkpoint(path: str | os.PathLike, *, dcp_prefix: str = "auto") -> CheckpointReader:
    """Open a checkpoint for streaming reads.

    path: an HF directory (model.safetensors, or shards + model.safetensors.index.json, or any *.safetensors),
    a single .safetensors file, or a DCP directory (contains `.metadata`). Nothing is read but headers/metadata.
    """
    p = Path(path)
    if isinstance(path, CheckpointReader):
        return path
    if p.is_file() and p.suffix == ".safetensors":
        return SafetensorsReader(str(p), [str(p)])
    if p.is_dir():
        if (p / ".metadata").is_file():
            return DCPReader(str(p), prefix=dcp_prefix)
        from prism_fast.models.hf_io import safetensors_index  # noqa: PLC0415 (the one index reader)
        try:
            return SafetensorsReader(str(p), [str(f) for f in safetensors_index(p)[0]])
        except FileNotFoundError:
            pass                                                   # not an HF directory: the error below
    if p.suffix == ".gguf":
        raise ValueError(f"{path}: GGUF files are quantized; weight analysis needs the HF export. Convert with "
                         "prism_fast.models.from_pretrained(path).save_pretrained(dir) and pass the directory")
    raise ValueError(f"{path}: not a checkpoint. Expected an HF directory with *.safetensors (optionally sharded with "
                     "model.safetensors.index.json), a .safetensors file, or a torch.distributed.checkpoint "
                     "directory containing .metadata")


_WORKER_READERS: dict[tuple[str, str], CheckpointReader] = {}


def cached_reader(reader: CheckpointReader) -> CheckpointReader:
    """Per-process cache so a worker keeps its file handles open across work items."""
    key = (type(reader).__name__, reader.path)
    got = _WORKER_READERS.get(key)
    if got is None:
        got = _WORKER_READERS[key] = reader
    return got
