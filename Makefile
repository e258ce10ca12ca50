# gdpipe's commands: `make help` lists them. The first one that needs it creates .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# The venv's tools by the venv's real path (quoted: a clone's path may hold spaces). In a folder whose path
# has a '%', .venv links to a venv in the user's cache instead: MLflow cannot create a store from a venv whose
# path has one (it hands its migrations' folder to alembic's config, where '%' starts a template).
BIN := "$$(readlink -f $(VENV))/bin"
VENV_IN_CACHE = "$${XDG_CACHE_HOME:-$$HOME/.cache}/gdpipe/venv-$$(printf %s "$$PWD" | md5sum | cut -c1-12)"
STAMP := $(VENV)/.installed

# Nothing phones home: no DVC analytics or update checks, no MLflow telemetry. MLflow's servers
# (make ui, make server) start no job runner: gdpipe queues no GenAI jobs, and it keeps a core busy.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
SWEEP_LRS ?= 0.001 0.01 0.1
SERVE_VARIANT ?= torch
SERVE_PORT ?= 5001
SERVE_MAX_BYTES ?= 4000000
REPRO_WAIT ?= 600
SERVER_DIR ?= .server
SERVER_PORT ?= 5002
BENCH_OUT ?= bench/latest.json

# A .pth line in the venv's site-packages: every Python of the venv runs src/gdpipe/venv.py's start(),
# which puts the venv's tools on PATH (DVC starts queue workers as a bare `dvc`) and, in a DVC process of an
# account with no git identity, names one for DVC's experiment commits only (the user's git config is never
# written). A copy of the module, not an import of gdpipe: worktrees of other commits share this venv.
VENV_START := import gdpipe_venv_start; gdpipe_venv_start.start()

.PHONY: help repro test test-unit lint check promote reproduce serve server server-stop push pull bench ui sweep tune clean venv pipeline

help:  ## list these targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:[^#]*## /\t/' | expand -t 13

$(STAMP): pyproject.toml constraints.txt src/gdpipe/venv.py
	test -x $(BIN)/python || case "$$PWD" in \
		*%*) $(PYTHON) -m venv $(VENV_IN_CACHE) && ln -sfn $(VENV_IN_CACHE) $(VENV);; \
		*) $(PYTHON) -m venv $(VENV);; esac
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,server]'
	site="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" && \
		cp src/gdpipe/venv.py "$$site/gdpipe_venv_start.py" && echo '$(VENV_START)' > "$$site/gdpipe-venv-start.pth"
	touch $@

venv: $(STAMP)  ## create .venv with the pinned versions (constraints.txt)

# For repro, check and promote: a bad params.yaml stops at the first line, before DVC removes any stage's
# outputs. DVC reruns track for a new result only; the last line publishes the current one to the store
# named now (MLFLOW_TRACKING_URI) when runs.json says it is not there yet (src/gdpipe/track/where.py).
# Two of them in one clone take turns (src/gdpipe/clone_lock.py): the second waits, saying so in one line,
# for at most REPRO_WAIT seconds, instead of DVC refusing it in four.
IN_TURN := PYTHONPATH=src $(BIN)/python -m gdpipe.clone_lock --wait $(REPRO_WAIT) --
WHERE := PYTHONPATH=src $(BIN)/python -m gdpipe.track.where

pipeline: $(STAMP)
	PYTHONPATH=src $(BIN)/python -m gdpipe.core.config params.yaml
	$(IN_TURN) sh -c '"$$0/dvc" repro && "$$0/python" -m gdpipe.track.where publish' $(BIN)

repro: pipeline  ## run the pipeline (dvc repro) and print f(5) of both variants
	PYTHONPATH=src $(BIN)/python -m gdpipe.summary metrics.json
	@$(WHERE) show --ui http://127.0.0.1:$(UI_PORT)

# Two workers. The unit tier first: a broken function fails in seconds. Most of the integration tier
# waits on real dvc, MLflow and server processes; --dist loadfile keeps each of its files on one worker,
# so a costly fixture shared by one file's tests (the team server, a promoted or pushed copy of the
# project) is made once. The unit tier has none, and balances best test by test.
test: test-unit  ## run the tests: the unit tier (tests/unit), then the integration tier (tests/integration)
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/integration

test-unit: $(STAMP)  ## the unit tier alone: in-process tests of src/gdpipe, in about 30 s
	$(BIN)/python -m pytest -n 2 tests/unit

# actionlint checks every file in .github/workflows, without shellcheck and pyflakes: those run only
# where they happen to be on PATH, and lint passes or fails alike on every machine.
lint: $(STAMP)  ## ruff: lint and format check (make lint FIX=1 fixes what it can); actionlint: the CI workflow
	$(BIN)/ruff check $(if $(FIX),--fix) .
	$(BIN)/ruff format $(if $(FIX),,--check) .
	$(BIN)/actionlint -shellcheck= -pyflakes=

# The gate runs this checkout's src/ (PYTHONPATH), as the stages do, also from a git worktree.
GATE := PYTHONPATH=src $(BIN)/python -m gdpipe.gate --params params.yaml --metrics metrics.json \
	--plot plots/curves.png --report reports/check.md
REGISTRY := PYTHONPATH=src $(BIN)/python -m gdpipe.track.registry
TEAM_SERVER := PYTHONPATH=src $(BIN)/python -m gdpipe.team_server

check: pipeline  ## run the pipeline, then the quality gate (fails when a metric misses its bar)
	$(GATE)

# A failed check (exit 1) still goes on, to say which version stays champion; bad input (2) stops.
promote: pipeline  ## the pipeline and the gate; if every check passes, champion -> this result's models
	$(GATE) || test $$? -eq 1
	$(REGISTRY) promote --runs runs.json --published published.json --verdict reports/check.json --metrics metrics.json

# A registered model rebuilt from its lineage in a temporary git worktree, from nothing (no DVC cache, no
# run-cache, no remote), and compared bit for bit (src/gdpipe/track/reproduce.py, docs/reproduce.md). MODEL:
# name@alias or name/version, from the environment (quoted as given). The store is MLFLOW_TRACKING_URI's, the
# project's own by default; this workspace is only read, and Python writes no bytecode into it.
reproduce: $(STAMP)  ## rebuild a registered model from its lineage and compare (MODEL=gdpipe-torch@champion)
	PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=src $(BIN)/python -m gdpipe.track.reproduce "$$MODEL"

# A larger request body than SERVE_MAX_BYTES (4 MB: the model's 100,000 inputs per request, written out
# in full) gets 413 before it is read; errors are short and never repeat the request
# (src/gdpipe/request_guard.py).
serve: $(STAMP)  ## serve the champion (SERVE_VARIANT=torch) on http://127.0.0.1:5001 (SERVE_PORT)
	$(REGISTRY) serve --variant $(SERVE_VARIANT) --port $(SERVE_PORT) --max-bytes $(SERVE_MAX_BYTES)

# A team's stack on this machine (docs/team-server.md): PostgreSQL on a socket in SERVER_DIR, MLflow on
# 127.0.0.1 with proxied artifacts. SERVER_AUTH=1: basic auth, admin MLFLOW_TRACKING_USERNAME/PASSWORD.
server: $(STAMP)  ## a team tracking server: MLflow on PostgreSQL, on http://127.0.0.1:5002 (SERVER_PORT)
	$(TEAM_SERVER) start --dir '$(SERVER_DIR)' --port $(SERVER_PORT) $(if $(filter 1,$(SERVER_AUTH)),--auth)

server-stop: $(STAMP)  ## stop what make server started (the same SERVER_DIR); its data stays for the next start
	$(TEAM_SERVER) stop --dir '$(SERVER_DIR)'

# DVC's push and pull of the default remote (.dvc/config; docs/remote.md), run-cache included (the push
# also sends the outputs of every run it records); a failure is one line naming the remote. A pull
# changes the workspace only once every file has arrived and matches its hash; partial files go.
REMOTE := PYTHONPATH=src $(BIN)/python -m gdpipe.remote

push: $(STAMP)  ## send data, histories, models, the plot and DVC's run-cache to the DVC remote
	$(REMOTE) push

pull: $(STAMP)  ## bring them back from the remote: then make repro trains nothing
	$(REMOTE) pull

bench: $(STAMP)  ## benchmark against the hardware floor and the plain tutorial (bench/README.md)
	$(BIN)/python bench/run.py --out '$(BENCH_OUT)'

# On this machine only unless UI_HOST says otherwise. One worker: multi-worker servers are known to
# stall on slow connections.
ui: $(STAMP)  ## the MLflow UI for this project's runs, on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri '$(STORE)' --host $(UI_HOST) --port $(UI_PORT) --workers 1

# Queued DVC experiments, two at a time; every run lands in mlruns/. The table keeps what a sweep
# compares, the learning rate and each variant's final loss (none: it diverged), within 80 columns.
# DVC's experiment executor writes the cache's path into its copy's config as ASCII (ConfigObj's default),
# so in a folder whose path is not ASCII every queued run fails, said only in a worker's log: say it first.
sweep: $(STAMP)  ## a learning-rate sweep (SWEEP_LRS) as queued DVC experiments
	for lr in $(SWEEP_LRS); do $(BIN)/dvc exp run --queue -S train.lr=$$lr || exit 2; done
	$(BIN)/dvc queue start -j 2
	for i in $$(seq 900); do $(BIN)/dvc queue status | grep -qE 'Queued|Running' || break; sleep 2; done
	status="$$($(BIN)/dvc queue status)" && echo "$$status" && ! echo "$$status" | grep -qE 'Failed|Queued|Running'
	$(BIN)/dvc exp show --no-pager --drop '.*' --keep 'Experiment|train\.lr|(numpy|torch)\.loss'

# An Optuna study of train.lr (params.yaml's tune; docs/tune.md): one line per finished trial, then the best lr
# against the closed form. The study is in GDPIPE_TUNE_STORAGE (make server prints it), else mlruns/optuna.db:
# any number of clones pointed at one storage share the study, each trial run once.
tune: $(STAMP)  ## an Optuna study of the learning rate, each trial a DVC experiment and MLflow run
	PYTHONPATH=src $(BIN)/python -m gdpipe.tune --params params.yaml

clean:  ## remove .venv and the test caches (after a wrong Python, say)
	rm -rf "$$(readlink -f $(VENV))" $(VENV) .pytest_cache .hypothesis .ruff_cache
