# gdpipe: `make repro` runs the pipeline, `make test` the tests, `make check` the pipeline and then
# the quality gate (exit 1 when a metric misses its bar; make reports it as 2), `make bench` the
# benchmark. The first use creates .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The venv's tools first on PATH: DVC starts queue workers by running a bare `dvc`.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Nothing phones home: no DVC analytics or update checks, no MLflow telemetry.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
SWEEP_LRS ?= 0.001 0.01 0.1

.PHONY: pipeline repro test check bench ui sweep venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP)

# The pipeline, for repro and check: a bad params.yaml stops at the first line, in one line,
# before DVC removes any stage's outputs.
pipeline: $(STAMP)
	PYTHONPATH=src $(BIN)/python -m gdpipe.core.config params.yaml
	$(BIN)/dvc repro

repro: pipeline
	PYTHONPATH=src $(BIN)/python -m gdpipe.summary metrics.json
	@echo "Both runs are in MLflow: make ui, then open http://127.0.0.1:$(UI_PORT)/#/experiments/1/runs?workflowType=machine_learning"

# Two workers: most of the suite waits on real dvc, MLflow and server processes.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

# The gate runs this checkout's src/ (PYTHONPATH), as the stages do, also from a git worktree.
# It prints the table and writes reports/check.md with reports/check.png; bounds: params.yaml thresholds.
check: pipeline
	PYTHONPATH=src $(BIN)/python -m gdpipe.gate --params params.yaml --metrics metrics.json \
		--plot plots/curves.png --report reports/check.md

# Performance against the hardware floor and the plain tutorial script: a table and bench/results.json.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The MLflow UI for this project's store, on this machine only (UI_HOST=0.0.0.0 shows it to the
# network: a choice to make on purpose). One worker: multi-worker servers are known to stall on
# slow connections.
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri $(STORE) --host $(UI_HOST) --port $(UI_PORT) --workers 1

# A learning-rate sweep as queued DVC experiments, two at a time; every run lands in mlruns/.
# The table keeps what a sweep compares, the learning rate and each variant's final loss (none: it
# diverged), within 80 columns.
sweep: $(STAMP)
	for lr in $(SWEEP_LRS); do $(BIN)/dvc exp run --queue -S train.lr=$$lr || exit 2; done
	$(BIN)/dvc queue start -j 2
	for i in $$(seq 900); do $(BIN)/dvc queue status | grep -qE 'Queued|Running' || break; sleep 2; done
	$(BIN)/dvc queue status
	! $(BIN)/dvc queue status | grep -qE 'Failed|Queued|Running'
	$(BIN)/dvc exp show --no-pager --drop '.*' --keep 'Experiment|train\.lr|(numpy|torch)\.loss'

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
