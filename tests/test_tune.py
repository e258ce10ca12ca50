"""make tune: the search finds the learning rate the math predicts, each trial is a DVC experiment and a child run
of the study's parent run, a diverged trial is a result, and bad input is one line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gdpipe.core import config
from gdpipe.core.artifacts import TrainedModel
from gdpipe.core.config import VARIANTS
from gdpipe.data import generate
from gdpipe.evaluate import evaluate
from gdpipe.train import train
from gdpipe.tune import search, trial
from gdpipe.tune.__main__ import closed_form_lr
from support import (
    assert_one_error_line,
    copy_repo,
    dvc,
    git,
    load_default_params,
    make,
    src_env,
    with_overrides,
    write_yaml,
)

CLOSED_FORM = 1 / 15  # 1/(2 mean(x^2)) for x = 1, 2, 3, 4: one step of gradient descent lands on w* = 2


def tune_params(**overrides: object) -> config.Params:
    return config.Params.model_validate(with_overrides(load_default_params(), overrides))


def in_process(params: config.Params):
    """make tune's objective for a learning rate, computed here: the pipeline's own training and evaluation,
    then trial.objective on its metrics (the single-machine test shows it equal to a real trial's, bit for bit)."""
    data = generate(params.data)

    def objective(_, lr: float) -> float:
        trained = params.model_copy(
            update={"train": params.train.model_copy(update={"lr": lr, "epochs": params.tune.epochs})}
        )
        histories = {variant: train(variant, data, trained.train) for variant in VARIANTS}
        models = {variant: TrainedModel.from_history(variant, history, {}) for variant, history in histories.items()}
        return trial.objective(evaluate(data, models, histories, trained))

    return objective


def test_the_search_finds_the_closed_form_learning_rate(tmp_path):
    """params.yaml's study (TPE, seed 0, 30 trials of 3 epochs) ends within 1 % of 1/15; the same seed asks for the
    same learning rates again."""
    params = tune_params()
    assert (params.tune.sampler, params.tune.seed, params.tune.trials) == ("tpe", 0, 30)
    assert math.isclose(closed_form_lr(params), CLOSED_FORM)
    asked = []
    for attempt in range(2):
        opened = search.open_study(f"sqlite:///{tmp_path / f'study-{attempt}.db'}", params.tune)
        assert opened.created
        search.work(opened, params.tune, in_process(params))
        trials = search.complete(opened.study)
        assert [t.number for t in trials] == list(range(30))
        asked.append([t.params["lr"] for t in trials])
        best = min(trials, key=search.value)
        assert abs(best.params["lr"] / CLOSED_FORM - 1) < 0.01, best.params
        assert best.value < 1e-7
    assert asked[0] == asked[1]


def test_a_diverged_trial_is_a_result():
    metrics = {"numpy": {"diverged": True, "epochs_trained": 2}, "torch": {"diverged": False, "loss": 0.5}}
    assert trial.objective(metrics) == math.inf
    assert trial.objective({"numpy": {"loss": 0.25}, "torch": {"loss": 0.5}}) == 0.5


@pytest.fixture
def tune_repo(tmp_path) -> Path:
    """A copy of the project whose study is 3 trials of 10 epochs from lr 0.01 to 100: with seed 0 it asks for
    1.56, 7.3 and 2.57, and only 7.3 diverges (the loss grows like (15 lr)^20, beyond float32 for lr > 4.7)."""
    repo = copy_repo(tmp_path / "repo")
    overrides = {"tune.trials": 3, "tune.epochs": 10, "tune.lr_low": 0.01, "tune.lr_high": 100.0}
    document = with_overrides(load_default_params(), overrides)
    write_yaml(repo / "params.yaml", document)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "a small study")
    return repo


def test_make_tune_on_one_machine_without_a_server(tune_repo):
    """Three trials, each a DVC experiment and one run per variant, children of the study's one parent run, which
    holds the picture; the diverged trial is recorded and the study goes on; no run is left RUNNING."""
    repo = tune_repo
    done = make(repo, "tune", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert [line.split(":")[0] for line in lines] == ["trial   0", "trial   1", "trial   2"], done.stdout
    assert sum("loss diverged" in line for line in lines) == 1, lines
    assert "closed form" in done.stdout and "0.0666667" in done.stdout

    # Each trial is a DVC experiment of this clone, named after the study, its parent run and its number.
    params = config.load(repo / "params.yaml")
    study = search.open_study(f"sqlite:///{repo / 'mlruns' / 'optuna.db'}", params.tune).study
    trials = search.complete(study)
    parent_id = study.user_attrs[search.PARENT_ATTR]
    names = {t.user_attrs["dvc_experiment"] for t in trials}
    assert names == {trial.experiment_name(params.tune, parent_id, number) for number in range(3)}
    assert set(dvc(repo, "exp", "list", "--name-only").stdout.split()) == names
    # The objective make tune got from DVC is the one computed here, bit for bit (the closed-form test's).
    for done_trial in trials:
        assert search.value(done_trial) == in_process(params)(None, done_trial.params["lr"])

    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lr-search")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [run for run in runs if run.info.run_id == parent_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["gdpipe.tune.study"] == "lr-search"
    assert [artifact.path for artifact in client.list_artifacts(parent_id)] == ["tune.png"]
    best = min(trials, key=search.value)
    assert parent.data.metrics["best_lr"] == best.params["lr"] and parent.data.metrics["closed_form_lr"] == CLOSED_FORM
    children = [run for run in runs if run.info.run_id != parent_id]
    assert sorted((run.data.tags["gdpipe.tune.trial"], run.data.tags["variant"]) for run in children) == [
        (str(number), variant) for number in range(3) for variant in VARIANTS
    ]
    by_number = {str(t.number): t for t in trials}
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent_id
        done_trial = by_number[run.data.tags["gdpipe.tune.trial"]]
        assert float(run.data.params["train.lr"]) == done_trial.params["lr"]
        assert run.data.tags["dvc.exp_name"] == done_trial.user_attrs["dvc_experiment"]
    # Infinity for a trial of which a variant diverged: its run says so.
    diverged = {run.data.tags["gdpipe.tune.trial"] for run in children if run.data.tags["gdpipe.status"] == "diverged"}
    assert diverged == {str(t.number) for t in trials if math.isinf(search.value(t))} and len(diverged) == 1


def test_bad_tune_storage_is_one_line(tmp_path):
    """An unreachable storage: one line, exit 2, the password never shown."""
    write_yaml(tmp_path / "params.yaml", load_default_params())
    storage = "postgresql+psycopg2://alice:s3cret-pw@127.0.0.1:1/optuna"
    done = subprocess.run(
        [sys.executable, "-m", "gdpipe.tune"],
        cwd=tmp_path,
        env=src_env(GDPIPE_TUNE_STORAGE=storage),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "tune storage postgresql+psycopg2://127.0.0.1:1/optuna")
    assert "s3cret" not in done.stderr + done.stdout


def test_a_study_of_the_same_name_with_another_space_is_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search.open_study(storage, tune_params().tune)
    write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"tune.lr_high": 0.5}))
    done = subprocess.run(
        [sys.executable, "-m", "gdpipe.tune"],
        cwd=tmp_path,
        env=src_env(GDPIPE_TUNE_STORAGE=storage),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"gdpipe: error: tune storage {storage}: study 'lr-search' searches lr 0.001 to 0.2 with 3 epochs, "
        "params.yaml's tune lr 0.001 to 0.5 with 3 epochs: name another study (tune.study) or search the same space\n"
    )
