"""make tune: the search finds the learning rate the math predicts, each trial is a DVC experiment and a child run
of the study's parent run, a diverged trial is a result, and bad input is one line."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from gdpipe.core import config
from gdpipe.core.artifacts import TrainedModel
from gdpipe.core.config import VARIANTS
from gdpipe.data import generate
from gdpipe.evaluate import evaluate
from gdpipe.train import train
from gdpipe.tune import search, trial
from gdpipe.tune.__main__ import closed_form_lr
from remotes import clone, git
from support import (
    assert_one_error_line,
    copy_repo,
    dvc,
    load_default_params,
    make,
    src_env,
    wait_for,
    with_overrides,
    write_yaml,
)
from team import PASSWORD

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


def tune_in(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m gdpipe.tune` (what make tune runs) in `folder`, its output captured."""
    return subprocess.run([sys.executable, "-m", "gdpipe.tune"], cwd=folder, env=env, capture_output=True, text=True)


def test_bad_tune_storage_is_one_line(tmp_path):
    """An unreachable storage: one line, exit 2, the password never shown."""
    write_yaml(tmp_path / "params.yaml", load_default_params())
    storage = "postgresql+psycopg2://alice:s3cret-pw@127.0.0.1:1/optuna"
    done = tune_in(tmp_path, src_env(GDPIPE_TUNE_STORAGE=storage))
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "tune storage postgresql+psycopg2://127.0.0.1:1/optuna")
    assert "s3cret" not in done.stderr + done.stdout


def test_make_tune_in_a_folder_whose_path_is_not_ascii_stops_before_any_study(tmp_path):
    """DVC cannot set up a temporary experiment there (venv.experiments_blocked): every trial would fail, so make tune
    says so at once and makes no study, which would leave a failed trial and a RUNNING parent run behind."""
    folder = tmp_path / "é"
    folder.mkdir()
    write_yaml(folder / "params.yaml", load_default_params())
    done = tune_in(folder, src_env())
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "make tune runs each trial as a temporary DVC experiment", f"({folder})")
    assert done.stderr.rstrip().endswith("clone the project to an ASCII path")
    assert not (folder / "mlruns").exists()


def test_a_failed_trial_stops_the_worker_with_its_own_line_and_optuna_says_nothing(tmp_path):
    """A trial whose `dvc exp run` fails (here: a folder that is no DVC repository) ends make tune with gdpipe's one
    line; Optuna logs such a trial as a warning with its traceback, which gdpipe's verbosity keeps off stderr."""
    write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"tune.trials": 1}))
    done = tune_in(tmp_path, src_env())
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, "trial 0 (train.lr ", "dvc exp run failed: ")


def test_a_study_of_the_same_name_with_another_space_is_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search.open_study(storage, tune_params().tune)
    write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"tune.lr_high": 0.5}))
    done = tune_in(tmp_path, src_env(GDPIPE_TUNE_STORAGE=storage))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"gdpipe: error: tune storage {storage}: study 'lr-search' searches lr 0.001 to 0.2 with 3 epochs, "
        "params.yaml's tune lr 0.001 to 0.5 with 3 epochs: name another study (tune.study) or search the same space\n"
    )


# --- several machines: clones of one project sharing a study on make server's PostgreSQL -------------------


def storage_of(team_server) -> str:
    """The storage make server printed (export GDPIPE_TUNE_STORAGE=...)."""
    (line,) = [line for line in team_server.outputs[0].splitlines() if line.startswith("export GDPIPE_TUNE_STORAGE=")]
    return shlex.split(line.removeprefix("export "))[0].split("=", 1)[1]


def clones(tmp_path: Path, count: int, **overrides: object) -> list[Path]:
    """`count` clones of a project whose tune section has `overrides`: as many machines, each its own DVC cache."""
    source = copy_repo(tmp_path / "source")
    write_yaml(source / "params.yaml", with_overrides(load_default_params(), overrides))
    git(source, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qam", "the team's study")
    return [clone(source, tmp_path / f"machine-{index}") for index in range(count)]


def start_tune(repo: Path, env: dict[str, str]) -> subprocess.Popen:
    command = ["make", "-o", ".venv/.installed", "tune"]
    with (repo.parent / f"{repo.name}.log").open("w") as log:  # the worker keeps its own copy of the file
        return subprocess.Popen(
            command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def study_and_runs(team_server, monkeypatch, name: str):
    """The study's trials by state, its MLflow runs, and its parent run's id."""
    study = optuna.load_study(study_name=name, storage=storage_of(team_server))
    client = team_server.client(monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    return study, runs, study.user_attrs[search.PARENT_ATTR]


def assert_one_child_per_trial_and_variant(study, runs, parent_id: str, trials: int) -> None:
    complete = search.complete(study)
    assert len(complete) == trials
    lrs = [t.params["lr"] for t in complete]
    assert len(set(lrs)) == trials, lrs  # no learning rate asked twice
    parents = [run for run in runs if "gdpipe.tune.study" in run.data.tags]
    assert [run.info.run_id for run in parents] == [parent_id] and parents[0].info.status == "FINISHED"
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"]
    finished = [run for run in runs if run.info.status == "FINISHED" and run.info.run_id != parent_id]
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in finished)
    assert sorted((float(run.data.params["train.lr"]), run.data.tags["variant"]) for run in finished) == sorted(
        (lr, variant) for lr in lrs for variant in VARIANTS
    )


def test_workers_in_three_clones_share_one_study(team_server, tmp_path, monkeypatch):
    """Started together against make server (PostgreSQL, MLflow with auth): exactly the asked trials, each learning
    rate once, one parent run, one child run per trial and variant; each trial a DVC experiment of the clone that
    ran it."""
    name = f"shared-{uuid.uuid4().hex[:8]}"
    machines = clones(tmp_path, 3, **{"tune.study": name, "tune.trials": 5})
    env = team_server.env(GDPIPE_TUNE_STORAGE=storage_of(team_server))
    workers = [start_tune(repo, env) for repo in machines]
    codes = [worker.wait(timeout=900) for worker in workers]
    logs = [(repo.parent / f"{repo.name}.log").read_text() for repo in machines]
    assert codes == [0, 0, 0], logs
    study, runs, parent_id = study_and_runs(team_server, monkeypatch, name)
    assert_one_child_per_trial_and_variant(study, runs, parent_id, 5)
    ran = [set(dvc(repo, "exp", "list", "--name-only").stdout.split()) for repo in machines]
    assert sum(len(names) for names in ran) == 5  # each trial ran in one clone only
    assert set().union(*ran) == {t.user_attrs["dvc_experiment"] for t in search.complete(study)}
    assert sum(line.startswith("trial ") for log in logs for line in log.splitlines()) == 5
    assert PASSWORD not in "".join(logs)


def test_a_worker_killed_mid_trial_leaves_its_trial_to_another(team_server, tmp_path, monkeypatch):
    """kill -9 of a whole worker (a lost machine) during a trial: the other worker fails it once its heartbeat has
    stood still for grace_period, runs it again with the same learning rate, and the study completes; no MLflow run
    is left RUNNING (a publisher killed mid-way leaves one, which the retry's publisher marks KILLED)."""
    name = f"killed-{uuid.uuid4().hex[:8]}"
    overrides = {"tune.study": name, "tune.trials": 4, "tune.heartbeat_interval": 1, "tune.grace_period": 5}
    machines = clones(tmp_path, 2, **overrides)
    env = team_server.env(GDPIPE_TUNE_STORAGE=storage_of(team_server), GDPIPE_ABANDONED_AFTER="5")
    victim, survivor = (start_tune(repo, env) for repo in machines)
    log = machines[0].parent / f"{machines[0].name}.log"
    wait_for(lambda: "trial " in log.read_text(), victim, 600, "the first worker's first trial")
    time.sleep(3)  # well into its next trial (about 15 s each)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=900) == 0, (machines[1].parent / f"{machines[1].name}.log").read_text()
    study, runs, parent_id = study_and_runs(team_server, monkeypatch, name)
    assert_one_child_per_trial_and_variant(study, runs, parent_id, 4)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    (retried,) = [t for t in search.complete(study) if t.system_attrs.get("failed_trial") == failed.number]
    assert retried.params == failed.params


def test_an_mlflow_server_that_refuses_the_credentials_is_one_line_before_any_study(team_server, tmp_path):
    write_yaml(tmp_path / "params.yaml", load_default_params())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = team_server.env(GDPIPE_TUNE_STORAGE=storage, MLFLOW_TRACKING_PASSWORD="not-the-password")
    done = tune_in(tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, f"MLflow tracking store {team_server.url}", "refused the credentials")
    assert optuna.get_all_study_names(storage) == []  # nothing made that a later worker would wait on
