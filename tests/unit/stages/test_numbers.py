"""generate, train and evaluate on numbers from anywhere (hypothesis), in this process: each succeeds with finite
results (a divergence reported as such, never as NaN) or exits 2 with one line."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from support import (
    assert_one_error_line,
    files_under,
    load_default_params,
    run_stage,
    stage,
    strict_json,
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
    metrics = strict_json(metrics_path)
    event(f"evaluated, diverged: {sorted(v for v in ('numpy', 'torch') if metrics[v]['diverged'])}")
    assert all(math.isfinite(number) for number in _numbers_in(metrics)), metrics
    for variant in ("numpy", "torch"):
        model = strict_json(folder / f"{variant}.json")
        assert metrics[variant]["diverged"] is (model["diverged_at_epoch"] is not None)
        assert ("prediction" in metrics[variant]) is not metrics[variant]["diverged"]
