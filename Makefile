# nexttouch: `make demo` and `make test` work from nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export FEAST_USAGE := False
# LightGBM's OpenMP threads sleep while waiting: spinning made fits 4-5x slower on a busy 2-core machine.
export OMP_WAIT_POLICY := PASSIVE

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint format ui serve clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.synced: $(BIN)/python pyproject.toml uv.lock
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --python $(BIN)/python
	@touch $@

setup: $(VENV)/.synced ## Build the virtual environment from the lock file

demo: setup ## Simulate -> Feast -> LightGBM + MLflow -> bentoml serve -> real /decide calls
	$(BIN)/nexttouch demo

test: setup lint ## Lint, then the whole test suite (unit, Feast, MLflow, HTTP, real server)
	$(BIN)/pytest

test-fast: setup ## Tests without the slow and service-level ones
	$(BIN)/pytest -m "not slow and not service"

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: setup ## MLflow UI over mlruns/ on http://127.0.0.1:5000
	@echo "Open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (MLflow's model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

serve: setup ## Run the decision service on 127.0.0.1:3000 (after `make demo`)
	$(BIN)/nexttouch serve

clean: ## Remove generated data, runs and models (keeps the venv)
	rm -rf data mlruns/* models/*
	touch mlruns/.gitkeep models/.gitkeep
