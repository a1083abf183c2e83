# segaudit developer entry points. Every target sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_RUNS ?= runs/demo
FAULT_DIR ?= runs/demo-fault
HARD_RUNS ?= runs/demo-hard

.PHONY: help venv demo demo-hard demo-fault lint test test-full docs report-check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,hf,tensorboard,mlflow,lightning]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install segaudit with its test extras

demo: $(STAMP) ## diagnose the embedded synthetic scenes (ends HEALTHY), validate, plots, runs/demo/report.html
	rm -rf $(DEMO_RUNS)
	$(BIN)/segaudit diagnose paths.runs=$(DEMO_RUNS) run_id=demo --plots $(DEMO_RUNS)/plots
	$(BIN)/segaudit validate demo paths.runs=$(DEMO_RUNS); \
		echo "validate exit code: $$? (0 = every gate passed, 1 = a gate failed)"
	$(BIN)/segaudit report plots $(DEMO_RUNS)/plots paths.runs=$(DEMO_RUNS)
	$(BIN)/segaudit report html $(DEMO_RUNS)/report.html paths.runs=$(DEMO_RUNS)
	@echo "open $(DEMO_RUNS)/report.html in a browser: the verdict, the evidence and the pictures on one page"

demo-hard: $(STAMP) ## the slow-to-learn texture scenes: the default 300 steps are INCONCLUSIVE, the adaptive budget HEALTHY (13-21 min)
	rm -rf $(HARD_RUNS)
	$(BIN)/segaudit diagnose dataset=synthetic_hard train.iters=300 run_id=short paths.runs=$(HARD_RUNS) \
		--no-noise-train --no-suspects diagnose.tier1=false; \
		echo "diagnose exit code: $$? (3 = INCONCLUSIVE: the default 300 steps cannot decide on these scenes)"
	$(BIN)/segaudit diagnose dataset=synthetic_hard run_id=adaptive paths.runs=$(HARD_RUNS) \
		--no-noise-train --no-suspects diagnose.tier1=false; \
		echo "diagnose exit code: $$? (0 = HEALTHY once the stages have trained enough)"
	$(BIN)/segaudit report html $(HARD_RUNS)/report.html paths.runs=$(HARD_RUNS)
	@echo "open $(HARD_RUNS)/report.html: the learning curves with intervals, the stages from INCONCLUSIVE to HEALTHY"

demo-fault: $(STAMP) ## diagnose a copy with 30% of its training pairs swapped on disk (ends PIPELINE_FAULT, lists them)
	rm -rf $(FAULT_DIR) && mkdir -p $(FAULT_DIR)
	$(BIN)/segaudit data synth --out $(FAULT_DIR)/data
	$(BIN)/python scripts/scramble_pairs.py $(FAULT_DIR)/data --share 0.3
	$(BIN)/segaudit diagnose dataset=folder dataset.root=$(FAULT_DIR)/data \
		paths.runs=$(FAULT_DIR)/runs run_id=fault --plots $(FAULT_DIR)/plots; \
		status=$$?; echo "diagnose exit code: $$status (1 = flagged, as expected here)"; test $$status -eq 1
	$(BIN)/segaudit suspects --diagnose fault paths.runs=$(FAULT_DIR)/runs --top 10 \
		--export $(FAULT_DIR)/suspects.csv; \
		echo "suspects exit code: $$? (1 = more than gate.suspects_max_share of the pairs flagged)"

lint: $(STAMP) ## ruff: lint and format check (configured in pyproject.toml)
	$(BIN)/ruff check src tests scripts docs/hooks
	$(BIN)/ruff format --check src tests scripts docs/hooks

test: lint ## lint, then the test suite without slow end-to-end tests (< 10 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow" -q -n auto --dist loadfile --no-loadscope-reorder

test-full: lint ## lint, then every test, slow end-to-end ones included
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

docs: $(STAMP) ## build the manual (docs/) into site/ with MkDocs, strict: a warning or broken link fails
	$(BIN)/mkdocs build --strict --site-dir site

report-check: $(STAMP) ## render an HTML report in headless Chromium (Debian's chromium) and check the screenshot
	$(BIN)/python -m pytest -q -rs -m slow tests/e2e/test_html_in_chromium.py

bench: $(STAMP) ## unified loop vs a bare PyTorch loop (per-iteration time ratio)
	$(BIN)/python scripts/bench_loop.py

clean: ## remove the virtual environment and demo runs
	rm -rf $(VENV) $(DEMO_RUNS) $(HARD_RUNS) $(FAULT_DIR) site
