# Two commands for a new user:  `make demo` (train the quickstart pair and compare them)  and  `make test`.
# Both create .venv on first use and reuse it afterwards (re-installing only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all lint ui report clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Trains quickstart_dense and quickstart_moe (equal active parameters, equal token budget) on the embedded
# corpus and prints them side by side; both runs land in the MLflow store (sqlite:///mlflow.db).
demo: $(STAMP)
	$(BIN)/python train.py -m +experiment=quickstart_dense,quickstart_moe

# The default suite (slow and GPU tests excluded), ruff, the import layers.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 -m "not slow and not gpu" --durations=10 tests

# The tests marked slow (two-worker sweeps under kill -9 and Ctrl-C, whole studies and their resume, every preset
# and every run-time failure through the CLI, every notebook at SIZE="ci" in a fresh kernel, the report twice, the
# MLflow UI in chromium): about 9 minutes more; CI runs it after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "slow and not gpu" --durations=5 tests

test-all: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

# The cost-benefit table, measured (README "Report"): trains only the runs mlflow.db lacks, writes reports/.
# SIZE=ci for the quick check on debug models.
SIZE ?= full
report: $(STAMP)
	$(BIN)/python -m workbench.report --size $(SIZE)

ui: $(STAMP)
	@echo "runs table: http://127.0.0.1:5000/#/experiments/<id>?workflowType=machine_learning (the id each run prints)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root file://$(CURDIR)/mlartifacts

clean:
	rm -rf outputs .cache mlflow.db mlartifacts optuna.db optuna-journal.log reports
