"""The stage scripts on numbers from anywhere: each succeeds with finite results (a divergence reported as
such, never as NaN) or exits 2 with one line; an interrupted stage keeps its previous outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gdpipe.core import config
from gdpipe.summary import format_summary
from support import (
    EVALUATE_ARGS,
    EVALUATE_OUTS,
    REPO,
    TRAIN_ARGS,
    assert_one_error_line,
    build_workspace,
    files_under,
    load_default_params,
    run_stage,
    runs_in_store,
    stage,
    track_here,
    with_overrides,
    write_yaml,
)

MODERATE = {
    "data.true_w": st.floats(-4, 4),
    "data.noise_std": st.floats(0, 1),
    "data.x_low": st.floats(-4, 0),
    "data.x_high": st.floats(0.001, 4),
    "train.lr": st.floats(1e-4, 0.3),
    "train.w_init": st.floats(-4, 4),
    "evaluate.x": st.floats(-10, 10),
}
EXTREME = st.one_of(
    st.floats(),  # huge, tiny, subnormal, NaN, infinities
    st.sampled_from([0.0, 1e-46, -1e-46, 5e-324, 1e38, 3.4e38, -3.5e38, 1e39, 1e300, -1e300, 1e-300]),
)


@st.composite
def numeric_params(draw) -> dict:
    """The repository's params with moderate numbers, up to two of them drawn from anywhere in float64 (small data, few
    epochs).
    """
    overrides = {key: draw(strategy) for key, strategy in MODERATE.items()}
    for key in draw(st.lists(st.sampled_from(sorted(MODERATE)), max_size=2, unique=True)):
        value = draw(EXTREME)
        overrides[key] = abs(value) if key in ("data.noise_std", "train.lr") else value
    return overrides | {
        "data.n_samples": draw(st.integers(1, 40)),
        "data.seed": draw(st.integers(0, 2**64)),
        "data.x_layout": draw(st.sampled_from(["grid", "uniform"])),
        "train.epochs": draw(st.integers(1, 40)),
        "train.log_every": draw(st.integers(1, 7)),
        "train.numpy.gradient": draw(st.sampled_from(["mean", "sum"])),
    }


def _strict_json(path: Path):
    return json.loads(
        path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(f"{path}: {name}"))
    )


def _numbers_in(document) -> list:
    if isinstance(document, dict):
        return [n for value in document.values() for n in _numbers_in(value)]
    return [document] if isinstance(document, int | float) and not isinstance(document, bool) else []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numeric_params())
@example({"train.w_init": 1e300})  # beyond float32: infinity before the first epoch
@example({"data.true_w": 3e38, "data.n_samples": 4})  # y = true_w * x overflows float32
@example(
    {"data.x_layout": "uniform", "data.x_low": 0.0, "data.x_high": 1e-46}
)  # every x is 0 in float32: w undetermined
@example({"data.x_layout": "uniform", "data.x_low": -3e38, "data.x_high": 3e38})  # the range is wider than float32
@example({"evaluate.x": 1e308})  # f(x) = w * x overflows
@example({"train.lr": 1e38})  # diverges in the first epoch
@example({"train.lr": 0.5, "train.epochs": 200})  # diverges after some finite epochs
def test_numbers_from_anywhere_train_or_fail_cleanly_and_metrics_stay_finite(tmp_path_factory, overrides):
    """generate, train and evaluate either succeed with finite metrics (a divergence reported as such) or exit 2 with
    one line.
    """
    folder = tmp_path_factory.mktemp("numbers")
    params = write_yaml(folder / "params.yaml", with_overrides(load_default_params(), overrides))
    dataset = folder / "data" / "dataset.npy"
    code, stderr = run_stage(stage("generate").main, ["--params", str(params), "--out", str(dataset)])
    if code != 0:
        assert code == 2
        assert_one_error_line(stderr)
        assert str(params) in stderr or "data.x_" in stderr or "data.true_w" in stderr, stderr
        assert files_under(folder) == [params]
        event("refused by params or generate")
        return
    for variant in ("numpy", "torch"):
        code, stderr = run_stage(
            stage("train").main,
            [
                "--variant",
                variant,
                "--params",
                str(params),
                "--data",
                str(dataset),
                "--history",
                str(folder / f"{variant}.csv"),
                "--model",
                str(folder / f"{variant}.json"),
            ],
        )
        warned = stderr.startswith(f"gdpipe: warning: {variant} diverged at epoch ") and stderr.count("\n") == 1
        assert code == 0 and (stderr == "" or warned), stderr
    metrics_path = folder / "metrics.json"
    code, stderr = run_stage(
        stage("evaluate").main,
        [
            "--params",
            str(params),
            "--data",
            str(dataset),
            "--models",
            str(folder / "numpy.json"),
            str(folder / "torch.json"),
            "--histories",
            str(folder / "numpy.csv"),
            str(folder / "torch.csv"),
            "--out",
            str(metrics_path),
            "--plot",
            str(folder / "curves.png"),
        ],
    )
    if code != 0:
        assert code == 2
        assert_one_error_line(stderr)
        assert not metrics_path.exists()
        return
    metrics = _strict_json(metrics_path)
    event(f"evaluated, diverged: {sorted(v for v in ('numpy', 'torch') if metrics[v]['diverged'])}")
    assert all(math.isfinite(number) for number in _numbers_in(metrics)), metrics
    for variant in ("numpy", "torch"):
        model = _strict_json(folder / f"{variant}.json")
        assert metrics[variant]["diverged"] is (model["diverged_at_epoch"] is not None)
        assert ("prediction" in metrics[variant]) is not metrics[variant]["diverged"]


def test_evaluate_interrupted_while_drawing_keeps_both_previous_outputs(own_workspace, monkeypatch):
    """The plot (most of the stage's time) is drawn before either file is replaced: Ctrl-C then leaves both as they
    were.
    """
    folder = own_workspace
    monkeypatch.chdir(folder)
    before = {name: (folder / name).read_bytes() for name in EVALUATE_OUTS}
    text = (folder / "params.yaml").read_text()
    assert text.count("  x: 5.0\n") == 1
    (folder / "params.yaml").write_text(text.replace("  x: 5.0\n", "  x: 7.0\n"))  # a new result, had it got that far

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage("evaluate"), "draw_curves", interrupted)
    code, stderr = run_stage(stage("evaluate").main, EVALUATE_ARGS)
    assert code == 130 and stderr == "gdpipe: interrupted (SIGINT); no output was half-written\n"
    assert {name: (folder / name).read_bytes() for name in EVALUATE_OUTS} == before


@pytest.mark.parametrize("lr", [0.5, 1e38], ids=["after-some-epochs", "in-the-first-epoch"])
def test_a_diverged_run_is_reported_as_diverged_never_as_numbers(tmp_path, empty_store, lr):
    """metrics.json, the summary and MLflow say `diverged`; no NaN or infinity is published as a result."""
    from mlflow import MlflowClient

    folder = build_workspace(tmp_path / "ws", {"train.lr": lr})
    metrics = _strict_json(folder / "metrics.json")
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


# --- params.yaml edited while a stage runs (the real `dvc repro`: test_pipeline.py) ------------------


def test_params_edited_while_training_fail_the_train_stage_in_one_line(own_workspace, monkeypatch):
    """DVC would record the new lr beside a model trained with the old one; the stage fails instead, so it records
    nothing."""
    folder = own_workspace
    module = stage("train")
    trained = module.train

    def edited_while_training(*args, **kwargs):
        write_yaml(folder / "params.yaml", with_overrides(load_default_params(), {"train.lr": 0.02}))
        return trained(*args, **kwargs)

    monkeypatch.setattr(module, "train", edited_while_training)
    monkeypatch.chdir(folder)
    code, stderr = run_stage(module.main, TRAIN_ARGS)
    assert code == 2
    assert_one_error_line(stderr, "params.yaml changed while this stage ran (train.lr 0.01 -> 0.02)", "make repro")


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
