# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned to the local CPU wheel and installed first; unpinned, pip would pull a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_PIN := torch==2.13.0
HASH   := $(shell cat pyproject.toml | sha1sum | cut -c1-10)
RUNTIME_STAMP := $(VENV)/.runtime-$(HASH)
DEV_STAMP     := $(VENV)/.dev-$(HASH)

export MLFLOW_DISABLE_TELEMETRY ?= true
export PYTHONHASHSEED ?= 0

.PHONY: demo test install install-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/defialloc demo

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(RUNTIME_STAMP)
	$(BIN)/defialloc bench env

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis envs/compiled/__pycache__/defialloc-kernels-*
