"""MLflow: the store after real `dvc repro` runs, a real tracking server, a server that does not answer, run status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from servers import killed_if_this_process_dies

from support import (
    VENV_BIN,
    build_workspace,
    child_env,
    dvc,
    free_port,
    make,
    run_track,
    src_env,
    track_here,
    wait_for_server,
)

EPOCHS = 100


def store_uri(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gradient-descent")
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def assert_complete_run(uri: str, run, variant: str, epochs: int = EPOCHS) -> None:
    """A FINISHED run with the full per-epoch history, its params, tags, input, artifacts and a loadable model."""
    client = MlflowClient(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["variant"] == variant and len(run.data.tags["gdpipe.fingerprint"]) == 64
    for key in ("w", "loss"):
        points = client.get_metric_history(run.info.run_id, key)
        assert sorted(point.step for point in points) == list(range(1, epochs + 1)), key
    assert run.data.params["train.lr"] and run.data.params["variant"] == variant
    assert run.data.params["train.gradient"] == ("mean" if variant == "numpy" else "autograd")
    assert run.inputs.dataset_inputs[0].dataset.name == "dataset"
    assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} >= {
        f"{variant}.csv",
        "metrics.json",
        "curves.png",
        "params.yaml",
    }


def test_repro_publishes_one_complete_run_per_variant(reproduced_repo):
    uri = store_uri(reproduced_repo)
    runs = all_runs(uri)
    assert sorted(run.data.tags["variant"] for run in runs) == ["numpy", "torch"]
    published = json.loads((reproduced_repo / "runs.json").read_text())
    for run in runs:
        variant = run.data.tags["variant"]
        assert published[variant]["run_id"] == run.info.run_id
        assert_complete_run(uri, run, variant)
        assert run.data.metrics["prediction"] == pytest.approx(10.0, abs=1e-5)
        assert run.data.metrics["w"] == pytest.approx(2.0, abs=1e-6)  # the last epoch's w
        assert run.data.metrics["w_star"] == 2.0 and run.data.metrics["parity_max_abs_w_diff"] < 1e-6
        assert (
            run.data.tags["git.commit"]
            == subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=reproduced_repo, capture_output=True, text=True
            ).stdout.strip()
        )
        assert run.info.end_time >= run.info.start_time and run.data.metrics["training_seconds"] >= 0
    numpy_params, torch_params = (run.data.params for run in sorted(runs, key=lambda r: r.data.tags["variant"]))
    assert numpy_params.keys() == torch_params.keys()  # same names: "show diff only" isolates what differs
    assert {key for key in numpy_params if numpy_params[key] != torch_params[key]} == {"variant", "train.gradient"}


def test_pyfunc_model_predicts_f5_offline(reproduced_repo):
    run_id = json.loads((reproduced_repo / "runs.json").read_text())["torch"]["run_id"]
    script = (
        f"import mlflow; mlflow.set_tracking_uri({store_uri(reproduced_repo)!r}); "
        f"print(mlflow.pyfunc.load_model('runs:/{run_id}/model').predict([5.0])[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
        check=True,
    )
    assert float(done.stdout) == pytest.approx(10.0, abs=1e-5)
    assert "warn" not in done.stderr.lower(), done.stderr


def test_republishing_the_same_result_finds_its_run(reproduced_repo):
    before = {run.info.run_id for run in all_runs(store_uri(reproduced_repo))}
    done = dvc(reproduced_repo, "repro", "--force", "--single-item", "track")
    assert "already published as run" in done.stdout
    assert {run.info.run_id for run in all_runs(store_uri(reproduced_repo))} == before


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its own store, stopped after the test."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(),
        start_new_session=True,
    )
    try:
        with killed_if_this_process_dies(server):
            wait_for_server(url, server, tmp_path / "server.log")
            yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its workers; its store is thrown away anyway
        server.wait()
        log.close()


def test_pipeline_publishes_to_a_real_tracking_server(reproduced_repo, mlflow_server, tmp_path):
    """Complete runs and model versions on the server, in an experiment gdpipe makes there; promotion
    works there as on sqlite; a RUNNING run on a server may be another worker's, being written, so
    publishing again leaves it alone."""
    local_before = len(all_runs(store_uri(reproduced_repo)))
    env = child_env(MLFLOW_TRACKING_URI=mlflow_server)
    done = dvc(reproduced_repo, "repro", "--force", "--single-item", "track", env=env)
    assert done.stdout.count("new run") == 2
    runs = all_runs(mlflow_server)
    assert sorted(run.data.tags["variant"] for run in runs) == ["numpy", "torch"]
    for run in runs:
        assert_complete_run(mlflow_server, run, run.data.tags["variant"])
    client = MlflowClient(mlflow_server)
    report = tmp_path / "check.md"
    src = {"PYTHONPATH": "src"}
    gate = [sys.executable, "-m", "gdpipe.gate", "--report", str(report)]
    assert subprocess.run(gate, cwd=reproduced_repo, env=child_env(**src), capture_output=True).returncode == 0
    promote = [sys.executable, "-m", "gdpipe.track.registry", "promote", "--verdict", str(report.with_suffix(".json"))]
    promoted = subprocess.run(promote, cwd=reproduced_repo, env=env | src, capture_output=True, text=True)
    assert (promoted.returncode, promoted.stderr) == (0, "")
    assert promoted.stdout.splitlines() == [f"gdpipe-{v}: version 1 is champion (was none)" for v in ("numpy", "torch")]
    for variant in ("numpy", "torch"):
        aliases = client.get_registered_model(f"gdpipe-{variant}").aliases  # versions as the server sends them
        assert {alias: str(version) for alias, version in aliases.items()} == {"challenger": "1", "champion": "1"}
    in_progress = client.create_run(
        runs[0].info.experiment_id, tags={"gdpipe.fingerprint": "another worker's", "variant": "numpy"}
    ).info.run_id
    done = dvc(reproduced_repo, "repro", "--force", "--single-item", "track", env=env)
    assert done.stdout.count("already published as run") == 2 and "marked KILLED" not in done.stdout
    assert client.get_run(in_progress).info.status == "RUNNING"
    assert len(all_runs(store_uri(reproduced_repo))) == local_before  # nothing went to the local store


# With MLflow's own settings (7 retries, backoff factor 2, a 120 s timeout), either failure takes minutes;
# gdpipe's take seconds (track/settings.py). The bound sits between the two, far enough from a few seconds that
# a loaded machine, which doubles the stage's start-up (importing MLflow), does not fail it.
FAILS_FAST_S = 60


def timed_track(folder: Path, uri: str) -> tuple[subprocess.CompletedProcess, float]:
    """The track stage as a child in `folder` (support.run_track), publishing to `uri`, and how long it took."""
    start = time.monotonic()
    done = run_track(folder, src_env(MLFLOW_TRACKING_URI=uri))
    return done, time.monotonic() - start


def test_refused_tracking_server_fails_fast_with_one_line(own_workspace):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done, seconds = timed_track(own_workspace, uri)
    assert done.returncode == 2 and seconds < FAILS_FAST_S, (seconds, done.stderr)
    assert not (own_workspace / "published.json").exists() and not (own_workspace / "runs.json").exists()
    assert (
        done.stderr.startswith(f"gdpipe: error: MLflow tracking store {uri} refused the connection: is the server")
        and done.stderr.count("\n") == 1
    ), done.stderr


def test_silent_tracking_server_fails_within_seconds_not_minutes(own_workspace):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done, seconds = timed_track(own_workspace, uri)
    assert done.returncode == 2 and seconds < FAILS_FAST_S, (seconds, done.stderr)
    assert (
        done.stderr.startswith(f"gdpipe: error: MLflow tracking store {uri} did not answer")
        and done.stderr.count("\n") == 1
    ), done.stderr


def test_sweep_lands_every_queued_run_in_the_main_store(own_reproduced_repo):
    """`make sweep` with 2 learning rates, run by its two queue workers at once in temporary copies: all 4 runs
    land here.

    From a shell without the venv on PATH, where `.venv/bin/dvc queue start` starts workers as a bare
    `dvc`: the venv's .pth line puts its tools on PATH for them."""
    repo = own_reproduced_repo
    before = {run.info.run_id for run in all_runs(store_uri(repo))}
    env = child_env()
    env["PATH"] = os.pathsep.join(part for part in env["PATH"].split(os.pathsep) if Path(part) != VENV_BIN)
    done = make(repo, "sweep", "SWEEP_LRS=0.02 0.1", env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    new_runs = [run for run in all_runs(store_uri(repo)) if run.info.run_id not in before]
    assert len(new_runs) == 4
    lrs = sorted((run.data.params["train.lr"], run.data.tags["variant"]) for run in new_runs)
    assert lrs == [(lr, variant) for lr in ("0.02", "0.1") for variant in ("numpy", "torch")]
    for run in new_runs:
        assert_complete_run(store_uri(repo), run, run.data.tags["variant"])
        experiment = run.data.tags["dvc.exp_name"]
        assert run.info.run_name == f"{run.data.tags['variant']}-{experiment}" and run.data.tags["dvc.exp_baseline_rev"]
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("*/mlruns/*.db")), (
        "a queued run wrote to its temporary copy's store"
    )
    # The closing table: each experiment's learning rate and final losses, readable in 80 columns.
    lines = done.stdout.splitlines()
    start = max(index for index, line in enumerate(lines) if line.split()[:1] == ["Experiment"])
    assert lines[start].split() == ["Experiment", "numpy.loss", "torch.loss", "train.lr"], lines[start]
    rows = lines[start + 2 : -1]
    assert sorted(row.split()[-1] for row in rows if "[" in row) == ["0.02", "0.1"], rows
    assert [line for line in [lines[start], *rows] if len(line) > 80] == []


def test_a_failure_midway_marks_the_run_failed_and_says_why(reproduced_repo, tmp_path, empty_store):
    from gdpipe.core import config
    from gdpipe.core.artifacts import Dataset
    from gdpipe.core.command import InputError
    from gdpipe.core.files import read_json
    from gdpipe.track import publish
    from gdpipe.track.record import build_record

    repo = reproduced_repo
    params = config.load(repo / "params.yaml")

    def numpy_record(artifacts: tuple[Path, ...]):
        files = [repo / name for name in ("data/dataset.npy", "history/numpy.csv", "models/numpy.json", "metrics.json")]
        return build_record(params, read_json(repo / "metrics.json"), files[0], "numpy", *files[1:], artifacts, {})

    record = numpy_record((tmp_path / "vanished.png",))
    uri = empty_store(tmp_path / "store" / "mlflow.db")
    with pytest.raises(InputError, match=r"vanished\.png") as err:
        publish.publish([record], Dataset.load(repo / "data/dataset.npy"), "gradient-descent", "gdpipe", uri)
    (run,) = all_runs(uri)
    assert run.info.status == "FAILED"
    assert str(err.value).endswith(f"; numpy run {run.info.run_id} marked FAILED)")  # one line, said by the stage
    # The failed run does not count as published: the next attempt makes a complete one. It also marks
    # KILLED what a publisher killed with kill -9 left RUNNING (here: a numpy run of another result),
    # and leaves alone runs that are not gdpipe's.
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("gradient-descent").experiment_id
    abandoned = client.create_run(
        experiment_id, tags={"gdpipe.fingerprint": "another result", "variant": "numpy"}
    ).info.run_id
    not_ours = client.create_run(experiment_id, tags={"variant": "numpy"}).info.run_id
    record = numpy_record(())
    published = publish.publish([record], Dataset.load(repo / "data/dataset.npy"), "gradient-descent", "gdpipe", uri)
    assert published["numpy"]["created"] is True and published["numpy"]["abandoned_runs_killed"] == [abandoned]
    assert client.get_run(abandoned).info.status == "KILLED" and client.get_run(not_ours).info.status == "RUNNING"
    assert sorted(run.info.status for run in all_runs(uri)) == ["FAILED", "FINISHED", "KILLED", "RUNNING"]


def test_a_long_run_logs_a_bounded_spread_of_its_epochs_and_keeps_every_one_in_its_csv(tmp_path, empty_store):
    """5,000 epochs with track.max_points_per_metric 200: w and loss have 200 points each, from step 1 to
    step 5,000 evenly, the final values sit at the last step, and the history artifact has every epoch."""
    from gdpipe.core.artifacts import History
    from gdpipe.track.record import spread

    epochs, points = 5000, 200
    folder = build_workspace(tmp_path / "ws", {"train.epochs": epochs, "track.max_points_per_metric": points})
    uri = empty_store(tmp_path / "store" / "mlflow.db")
    code, stderr = track_here(folder, uri)
    assert code == 0, stderr
    client = MlflowClient(uri)
    for variant, run in json.loads((folder / "runs.json").read_text()).items():
        history = History.read_csv(folder / f"history/{variant}.csv")
        assert history.epoch.tolist() == list(range(1, epochs + 1))  # the DVC output keeps every epoch
        expected = history.epoch[spread(epochs, points)].tolist()
        for key, values in (("w", history.w), ("loss", history.loss)):
            logged = sorted(client.get_metric_history(run["run_id"], key), key=lambda point: point.step)
            steps = [point.step for point in logged]
            assert len(steps) == points and steps[0] == 1 and steps[-1] == epochs, (variant, key)
            assert steps == expected  # evenly spread: gaps of 25 and 26 epochs (4,999 / 199 = 25.1)
            assert set(np.diff(steps).tolist()) == {25, 26}
            assert [point.value for point in logged] == values[np.array(steps) - 1].tolist()
        tags = client.get_run(run["run_id"]).data.tags
        assert tags["gdpipe.metric_points"].startswith(f"w and loss at {points} of {epochs} recorded epochs")
        assert [point.step for point in client.get_metric_history(run["run_id"], "prediction")] == [epochs]
        (csv,) = [artifact for artifact in client.list_artifacts(run["run_id"]) if artifact.path == f"{variant}.csv"]
        assert csv.file_size == (folder / f"history/{variant}.csv").stat().st_size
