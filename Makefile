# segaudit developer entry points. Every target sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_RUNS ?= runs/demo

.PHONY: help venv demo test test-full bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install segaudit with its test extras

demo: $(STAMP) ## train on the embedded synthetic dataset and print the run table
	$(BIN)/segaudit train paths.runs=$(DEMO_RUNS) strategy=demo
	$(BIN)/segaudit report paths.runs=$(DEMO_RUNS)

test: $(STAMP) ## the test suite without slow end-to-end tests (< 10 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow" -q

test-full: $(STAMP) ## every test, slow end-to-end ones included
	$(BIN)/python -m pytest -q

bench: $(STAMP) ## unified loop vs a bare PyTorch loop (per-iteration time ratio)
	$(BIN)/python scripts/bench_loop.py

clean: ## remove the virtual environment and demo runs
	rm -rf $(VENV) $(DEMO_RUNS)
