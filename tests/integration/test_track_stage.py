"""The track stage in this process, publishing to a real sqlite MLflow store: a diverged run is published as
diverged, never as numbers; a model trained with other params than params.yaml's is refused; each stage checks
the params dvc.yaml declares for it."""

from __future__ import annotations

import json
import math

import pytest
from ruamel.yaml import YAML

from gdpipe.core import config
from gdpipe.summary import format_summary
from support import (
    REPO,
    assert_one_error_line,
    build_workspace,
    load_default_params,
    runs_in_store,
    strict_json,
    track_here,
    with_overrides,
    write_yaml,
)


@pytest.mark.parametrize("lr", [0.5, 1e38], ids=["after-some-epochs", "in-the-first-epoch"])
def test_a_diverged_run_is_reported_as_diverged_never_as_numbers(tmp_path, empty_store, lr):
    """metrics.json, the summary and MLflow say `diverged`; no NaN or infinity is published as a result."""
    from mlflow import MlflowClient

    folder = build_workspace(tmp_path / "ws", {"train.lr": lr})
    metrics = strict_json(folder / "metrics.json")
    for variant in ("numpy", "torch"):
        assert metrics[variant]["diverged"] is True and metrics[variant]["diverged_at_epoch"] >= 1
        assert not {"w", "loss", "prediction", "abs_error"} & set(metrics[variant])
        assert f"{variant:<8} diverged at epoch {metrics[variant]['diverged_at_epoch']}" in format_summary(metrics)
    uri = empty_store(tmp_path / "store" / "mlflow.db")
    code, stderr = track_here(folder, uri)
    assert code == 0, stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    assert sorted(run.data.tags["variant"] for run in runs) == ["numpy", "torch"]
    for run in runs:
        variant = run.data.tags["variant"]
        assert run.info.status == "FINISHED" and run.data.tags["gdpipe.status"] == "diverged"
        assert run.data.tags["gdpipe.diverged_at_epoch"] == str(metrics[variant]["diverged_at_epoch"])
        assert "prediction" not in run.data.metrics and "abs_error" not in run.data.metrics
        points = [point for key in ("w", "loss") for point in client.get_metric_history(run.info.run_id, key)]
        assert all(
            math.isfinite(point.value) and point.step < metrics[variant]["diverged_at_epoch"] for point in points
        )
        assert all(math.isfinite(value) for value in run.data.metrics.values())
    # The registry: a model with a finite w is registered, but never named challenger (nor promoted).
    for variant, run in json.loads((folder / "runs.json").read_text()).items():
        if lr == 1e38:  # diverged before its first finite step: no model, no version
            assert run["model_version"] is None and run["status"] == "diverged"
            continue
        version = client.get_model_version(f"gdpipe-{variant}", run["model_version"])
        assert version.run_id == run["run_id"] and version.tags["gdpipe.status"] == "diverged"
        at = metrics[variant]["diverged_at_epoch"]
        assert version.description.endswith(f"diverged at epoch {at}, never promoted")
        assert client.get_registered_model(f"gdpipe-{variant}").aliases == {}


def test_track_publishes_no_model_trained_with_other_params_than_it_would_publish(own_workspace, tmp_path, empty_store):
    """params.yaml changed after the train stage's last check, before DVC read it: dvc.lock says lr 0.02 for a model
    trained with 0.01. The model says what it was trained with, and track refuses it, publishing nothing."""
    folder = own_workspace
    assert json.loads((folder / "models" / "numpy.json").read_text())["trained_with"]["train.lr"] == 0.01
    write_yaml(folder / "params.yaml", with_overrides(load_default_params(), {"train.lr": 0.02}))
    db = tmp_path / "store" / "mlflow.db"
    code, stderr = track_here(folder, empty_store(db))
    assert code == 2
    assert_one_error_line(
        stderr,
        "models/numpy.json was trained with other params than params.yaml gives (train.lr 0.01 -> 0.02)",
        "nothing was published",
        "'.venv/bin/dvc repro --force --single-item train@numpy', then run make repro",
    )
    assert runs_in_store(db) == []
    assert not (folder / "runs.json").exists() and not (folder / "published.json").exists()


def test_each_stage_checks_the_params_dvc_yaml_declares_for_it(tmp_path, empty_store, monkeypatch):
    """The keys a stage checks before it exits are the ones DVC records for it after: no more (an edit of a key the
    stage never read would fail it for nothing), no fewer (DVC would record that key's new value)."""
    checked = []
    check = config.check_unchanged
    monkeypatch.setattr(
        config, "check_unchanged", lambda path, used, keys: checked.append(tuple(keys)) or check(path, used, keys)
    )
    folder = build_workspace(tmp_path / "ws")
    code, stderr = track_here(folder, empty_store(tmp_path / "store" / "mlflow.db"))
    assert code == 0, stderr
    stages = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]
    train = stages["train"]["params"]
    declared = [
        stages["generate"]["params"],
        *([key.replace("${item.variant}", variant) for key in train] for variant in ("numpy", "torch")),
        stages["evaluate"]["params"],
        stages["track"]["params"],  # before publishing
        stages["track"]["params"],  # and once more before it exits
    ]
    assert [sorted(keys) for keys in checked] == [sorted(keys) for keys in declared]
