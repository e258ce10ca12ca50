"""Publishing when things go wrong: Ctrl-C, kill and kill -9 mid-publish, parallel publishers on one
fresh sqlite store, a store that fails half-way. A run is never left RUNNING by a live publisher,
a result is never published twice, and the next publish completes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support import (
    PROGRAMS,
    assert_one_error_line,
    build_workspace,
    run_track,
    runs_in_store,
    src_env,
    start_track,
    track_here,
    wait_for,
)

EPOCHS_LONG = 2000


@pytest.fixture(scope="module")
def long_workspace(tmp_path_factory) -> Path:
    """Outputs with many epochs logged, every one (no bound): publishing each run's history takes about a second."""
    overrides = {"train.epochs": EPOCHS_LONG, "track.max_points_per_metric": EPOCHS_LONG}
    return build_workspace(tmp_path_factory.mktemp("long") / "ws", overrides)


def test_sigint_or_sigterm_while_publishing_marks_the_run_killed_and_the_next_publish_completes(
    long_workspace, tmp_path, reaper, empty_store
):
    """Ctrl-C (twice, impatiently) or kill while a run is being logged: one line, exit 130/143, the run KILLED,
    nothing written; publishing again makes complete runs."""
    cases = {
        "SIGINT": ([signal.SIGINT, signal.SIGINT], 130, "interrupted"),
        "SIGTERM": ([signal.SIGTERM], 143, "terminated"),
    }
    running = {}
    for name in cases:
        folder = tmp_path / name
        shutil.copytree(long_workspace, folder)
        db = tmp_path / f"{name}-store" / "mlflow.db"
        process = start_track(folder, src_env(MLFLOW_TRACKING_URI=empty_store(db)))
        reaper(process)
        running[name] = (folder, db, process)
    for name, (_, db, process) in running.items():
        wait_for(
            lambda db=db: any(status == "RUNNING" for _, status in runs_in_store(db)), process, what="a run was created"
        )
        for signum in cases[name][0]:
            process.send_signal(signum)
            time.sleep(0.05)
    for name, (folder, db, process) in running.items():
        _, stderr = process.communicate(timeout=60)
        _, code, word = cases[name]
        runs = dict(runs_in_store(db))
        killed = [run_id for run_id, status in runs.items() if status == "KILLED"]
        assert len(killed) == 1, (name, runs, process.returncode, stderr[-6000:])
        killed = killed[0]
        assert process.returncode == code and set(runs.values()) <= {"KILLED", "FINISHED"}, (
            runs,
            stderr,
        )  # never RUNNING
        assert re.fullmatch(
            rf"gdpipe: {word} \({name}\); (numpy|torch) run {killed} marked KILLED; no output was half-written\n",
            stderr,
        ), stderr
        assert not (folder / "published.json").exists() and not (folder / "runs.json").exists()
        assert not [path for path in folder.rglob("*.tmp")]
    folder, db, _ = running["SIGTERM"]
    code, stderr = track_here(folder, f"sqlite:///{db}")
    assert code == 0, stderr
    published = json.loads((folder / "runs.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    assert dict(runs_in_store(db)) == {killed: "KILLED"} | {run["run_id"]: "FINISHED" for run in published.values()}
    for run in published.values():
        assert len(client.get_metric_history(run["run_id"], "loss")) == EPOCHS_LONG


def test_a_run_left_running_by_sigkill_while_publishing_is_marked_killed_by_the_next_publish(
    long_workspace, tmp_path, reaper, empty_store
):
    """kill -9 gives the publisher no chance to mark its run; the next publish to the sqlite store does, and says so."""
    folder = tmp_path / "ws"
    shutil.copytree(long_workspace, folder)
    db = tmp_path / "store" / "mlflow.db"
    env = src_env(MLFLOW_TRACKING_URI=empty_store(db))
    process = start_track(folder, env)
    reaper(process)
    while True:  # kill it while one of its runs is RUNNING, as seen while it is stopped (it could finish in between)
        wait_for(lambda: any(status == "RUNNING" for _, status in runs_in_store(db)), process, what="a run was created")
        process.send_signal(signal.SIGSTOP)
        if any(status == "RUNNING" for _, status in runs_in_store(db)):
            break
        process.send_signal(signal.SIGCONT)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    # Through MLflow, which may write: it rolls back the transaction kill -9 cut short (a read-only look could not).
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    (abandoned,) = [run.info.run_id for run in runs if run.info.status == "RUNNING"]

    done = run_track(folder, env)
    assert done.returncode == 0, done.stderr
    published = json.loads((folder / "runs.json").read_text())
    assert dict(runs_in_store(db)) == {abandoned: "KILLED"} | {run["run_id"]: "FINISHED" for run in published.values()}
    assert f": run {abandoned} was left RUNNING by a publisher that was killed; marked KILLED\n" in done.stdout


# --- Concurrency -----------------------------------------------------------------------------


def test_parallel_publishers_on_one_fresh_store_lose_nothing_and_never_duplicate_a_result(workspace, tmp_path, reaper):
    """Two processes (like two `dvc exp` workers) publish 2 results of 2 runs each at once, one result in common."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    go = tmp_path / "go"
    lrs = {"a": ["0.01", "0.011"], "b": ["0.01", "0.021"]}  # 0.01: the same result in both
    workers = {
        name: subprocess.Popen(
            [sys.executable, PROGRAMS / "publisher.py", str(workspace), uri, str(go), *values],
            env=src_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, values in lrs.items()
    }
    for worker in workers.values():
        reaper(worker)
    go.touch()
    outputs = {}
    for name, worker in workers.items():
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0 and stderr == "", stderr
        outputs[name] = [json.loads(line) for line in stdout.splitlines()]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id], max_results=100)
    assert len(runs) == 6 and all(run.info.status == "FINISHED" for run in runs)  # 3 learning rates x 2 variants
    assert len({run.data.tags["gdpipe.fingerprint"] for run in runs}) == 6
    reported = {run_id for output in outputs.values() for published in output for run_id, _, _ in published.values()}
    assert reported == {run.info.run_id for run in runs}
    shared = [outputs["a"][0][v] for v in ("numpy", "torch")], [outputs["b"][0][v] for v in ("numpy", "torch")]
    assert [run[0::2] for run in shared[0]] == [run[0::2] for run in shared[1]]  # one run and one version for it
    assert sorted(created for pair in shared for _, created, _ in pair) == [False, False, True, True]
    # One model version per result and variant, each naming its own run.
    for variant in ("numpy", "torch"):
        versions = client.search_model_versions(f"name = 'gdpipe-{variant}'")
        assert sorted(int(version.version) for version in versions) == [1, 2, 3]
        runs_of_variant = {run.info.run_id for run in runs if run.data.tags["variant"] == variant}
        assert {version.run_id for version in versions} == runs_of_variant
    for run in runs:
        assert [point.step for point in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 101))
        assert run.data.params["train.lr"] in {lr for values in lrs.values() for lr in values}
        assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} == {
            f"{run.data.tags['variant']}.csv",
            "metrics.json",
            "curves.png",
        }


def test_a_store_that_fails_mid_publish_is_one_line_and_the_run_is_marked_failed(own_workspace, tmp_path, empty_store):
    """The artifact folder cannot be made (a file is in the way): exit 2, one line naming the run marked FAILED."""
    folder = own_workspace
    uri = empty_store(tmp_path / "store" / "mlflow.db")
    (tmp_path / "in-the-way").write_text("a file where the artifact folder should be")
    client = MlflowClient(uri)
    client.create_experiment("gradient-descent", artifact_location=(tmp_path / "in-the-way" / "artifacts").as_uri())
    code, stderr = track_here(folder, uri)
    assert code == 2
    ((run_id, status),) = runs_in_store(tmp_path / "store" / "mlflow.db")
    assert status == "FAILED"
    assert_one_error_line(
        stderr,
        f"gdpipe: error: MLflow tracking store {uri} failed: ",
        f" (publishing numpy; numpy run {run_id} marked FAILED)\n",
    )
    assert not (folder / "published.json").exists() and not (folder / "runs.json").exists()


def test_a_stop_while_the_run_is_being_made_marks_that_run_killed(own_workspace, tmp_path, monkeypatch, empty_store):
    """Ctrl-C that arrives inside create_run is held until the store has answered, so the run's id is
    known and the run is marked KILLED, not left RUNNING."""
    made = MlflowClient.create_run

    def made_then_interrupted(self, *args, **kwargs):
        run = made(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came while the store answered
        return run

    monkeypatch.setattr(MlflowClient, "create_run", made_then_interrupted)
    db = tmp_path / "store" / "mlflow.db"
    code, stderr = track_here(own_workspace, empty_store(db))
    ((run_id, status),) = runs_in_store(db)
    assert (code, status) == (130, "KILLED")
    assert stderr == f"gdpipe: interrupted (SIGINT); numpy run {run_id} marked KILLED; no output was half-written\n"
