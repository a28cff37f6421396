#!/usr/bin/env bash
# Download the pure-Python wheels that bench/gpu_check.sh may need on a GPU machine without a package registry
# (its image has torch + triton, maybe not the rest). PYVER: the GPU image's Python (e.g. 3.12).
set -euo pipefail
cd "$(dirname "$0")"
PYVER="${PYVER:-3.12}"   # the GPU image: Python 3.12, torch 2.11, triton 3.6
mkdir -p wheelhouse
python3 -m pip download -q --only-binary=:all: --no-deps --python-version "$PYVER" -d wheelhouse \
  pytest pluggy iniconfig pytest-timeout safetensors tokenizers transformers huggingface-hub gguf tqdm \
  regex pyyaml nanobind
du -sh wheelhouse
