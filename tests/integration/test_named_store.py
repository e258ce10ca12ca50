"""The store a user names is the store that holds the result: `make repro` publishes the current result
to MLFLOW_TRACKING_URI's store even when DVC had every stage cached, once, and its last line names it.
How runs.json and the last line are decided: tests/unit/track/test_where.py."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from support import VARIANTS, child_env, make, runs_in_store, stages_run

UI = "http://127.0.0.1:5000"  # make ui's address (the Makefile's UI_HOST and UI_PORT)


def test_make_repro_publishes_a_cached_result_to_a_newly_named_store_once(own_reproduced_repo, tmp_path, empty_store):
    """DVC has every stage up to date; a user names another sqlite store. Only track reruns (nothing is
    trained again, dvc.lock stays as it is), the runs land there, and the last line says so. The next
    make repro, with nothing new, neither reruns track nor publishes again."""
    repo = own_reproduced_repo
    kept = ["history/numpy.csv", "history/torch.csv", "models/numpy.json", "models/torch.json"]
    before = {name: ((repo / name).read_bytes(), (repo / name).stat().st_mtime_ns) for name in kept}
    lock = (repo / "dvc.lock").read_bytes()  # DVC writes it again after track, byte for byte the same
    elsewhere = empty_store(tmp_path / "elsewhere" / "mlflow.db")
    env = child_env(MLFLOW_TRACKING_URI=elsewhere)
    old = json.loads((repo / "runs.json").read_text())["numpy"]["tracking_uri"]  # the store of the copied repo

    done = make(repo, "repro", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stages_run(done.stdout) == {"track"}
    reason = f"runs.json: the runs are in {old}, not in {elsewhere}"
    assert f"{reason}: publishing the current result there (dvc repro --single-item --force track)\n" in done.stdout
    assert done.stdout.count(": new run ") == 2
    last = f"Both runs are in MLflow at {elsewhere}: make ui STORE={elsewhere}, then open {UI}/#/experiments/1?"
    assert done.stdout.endswith(f"{last}workflowType=machine_learning\n")
    assert {name: ((repo / name).read_bytes(), (repo / name).stat().st_mtime_ns) for name in kept} == before
    assert (repo / "dvc.lock").read_bytes() == lock

    client = MlflowClient(elsewhere)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    published = json.loads((repo / "published.json").read_text())
    recorded = json.loads((repo / "runs.json").read_text())
    metrics = json.loads((repo / "metrics.json").read_text())
    assert sorted(run.data.tags["variant"] for run in runs) == sorted(VARIANTS)
    for run in runs:
        variant = run.data.tags["variant"]
        assert run.info.status == "FINISHED" and run.info.run_id == recorded[variant]["run_id"]
        assert run.data.tags["gdpipe.fingerprint"] == published[variant]["fingerprint"]
        assert run.data.metrics["prediction"] == metrics[variant]["prediction"] == pytest.approx(10.0, abs=1e-5)
        assert run.data.metrics["w"] == metrics[variant]["w"]
        assert recorded[variant]["tracking_uri"] == elsewhere
    assert runs_in_store(repo / "mlruns" / "mlflow.db") == []  # the copy's own store got nothing

    state = (repo / "runs.json").stat().st_mtime_ns
    again = make(repo, "repro", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stages_run(again.stdout) == set() and "publishing" not in again.stdout
    assert again.stdout.endswith(f"{last}workflowType=machine_learning\n")
    assert (repo / "runs.json").stat().st_mtime_ns == state
    assert len(client.search_runs([runs[0].info.experiment_id])) == 2
    assert (repo / "dvc.lock").read_bytes() == lock
