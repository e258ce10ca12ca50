"""The quality gate's logic: thresholds in params.yaml, and the checks on synthetic metrics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gdpipe import gate
from gdpipe.core import config
from gdpipe.core.command import InputError
from gdpipe.core.config import Bound
from support import LESSON, REPO, lesson, params_yaml

DEFAULTS = {"abs_error": Bound(max=0.01), "loss": Bound(max=1.0e-4), "parity.max_abs_w_diff": Bound(max=1.0e-5)}


def diverged_at(epoch: int) -> dict:
    """A variant section as evaluate writes it for a run whose w overflowed at `epoch`."""
    return {"diverged": True, "epochs_trained": epoch - 1, "diverged_at_epoch": epoch}


def rows(results: list[gate.Result]) -> list[tuple]:
    return [(result.metric, result.variant, result.value, result.bound, result.passed) for result in results]


# --- the thresholds in params.yaml ---------------------------------------------------------------


def test_params_yaml_ships_the_default_bounds():
    assert config.load(REPO / "params.yaml").thresholds == DEFAULTS


def test_leaving_the_section_out_is_an_error(tmp_path):
    (tmp_path / "params.yaml").write_text(params_yaml(None))
    with pytest.raises(InputError, match="missing key 'thresholds'"):
        config.load(tmp_path / "params.yaml")


def test_thresholds_name_metrics_for_every_variant_one_variant_or_the_parity(tmp_path):
    text = (
        "thresholds: {w: {min: 1.9, max: 2.1}, torch.loss: {max_rel_increase: 0.1, baseline_rev: main}, "
        "parity.max_abs_w_diff: {max: 0}}"
    )
    (tmp_path / "params.yaml").write_text(params_yaml(text))
    assert config.load(tmp_path / "params.yaml").thresholds == {
        "w": Bound(min=1.9, max=2.1),
        "torch.loss": Bound(max_rel_increase=0.1, baseline_rev="main"),
        "parity.max_abs_w_diff": Bound(max=0.0),
    }


# --- check(): pure, on synthetic metrics ---------------------------------------------------------


def test_the_lessons_metrics_pass_the_default_bounds():
    results = gate.check(LESSON, DEFAULTS, {})
    assert rows(results) == [
        ("diverged", "numpy", None, "= false", True),
        ("diverged", "torch", None, "= false", True),
        ("abs_error", "numpy", 1.7881393432617188e-06, "<= 0.01", True),
        ("abs_error", "torch", 1.7881393432617188e-06, "<= 0.01", True),
        ("loss", "numpy", 8.988365607365267e-13, "<= 0.0001", True),
        ("loss", "torch", 8.988365607365267e-13, "<= 0.0001", True),
        ("parity.max_abs_w_diff", "both", 5.960464477539063e-08, "<= 1e-05", True),
    ]
    assert gate.verdict(results) == "PASS: all 7 checks passed"


def test_a_bound_tighter_than_the_result_fails_and_names_the_metric():
    results = gate.check(LESSON, {"abs_error": Bound(max=0.01), "loss": Bound(max=1e-13)}, {})
    assert [(result.metric, result.variant) for result in results if not result.passed] == [
        ("loss", "numpy"),
        ("loss", "torch"),
    ]
    assert gate.verdict(results) == "FAIL: 2 of 6 checks failed: loss (numpy), loss (torch)"
    table = gate.format_table(results).splitlines()
    assert table[0].split() == ["metric", "variant", "value", "bound", "result"]
    assert table[5].split() == ["loss", "numpy", "8.98837e-13", "<=", "1e-13", "FAIL"]
    assert table[3].split() == ["abs_error", "numpy", "1.78814e-06", "<=", "0.01", "pass"]
    markdown = gate.format_markdown(results, "check.png")
    assert markdown.startswith("## gdpipe quality gate: FAIL\n\n2 of 6 checks failed: loss (numpy), loss (torch).\n")
    assert "| `loss` | numpy | 8.98837e-13 | <= 1e-13 | ❌ **FAIL** |" in markdown.splitlines()
    assert "| `abs_error` | torch | 1.78814e-06 | <= 0.01 | ✅ pass |" in markdown.splitlines()
    assert markdown.endswith("\n![Loss and w per epoch of both variants](check.png)\n")


@given(
    value=st.floats(-1e6, 1e6),
    low=st.floats(-1e6, 1e6),
    width=st.floats(0, 1e6),
)
def test_min_and_max_are_inclusive_absolute_bounds(value, low, width):
    high = low + width
    results = gate.check(lesson(numpy=LESSON["numpy"] | {"w": value}), {"numpy.w": Bound(min=low, max=high)}, {})
    assert [result.passed for result in results[2:]] == [value >= low, value <= high]
    assert gate.passed(results) == (low <= value <= high)


def test_a_variant_prefix_bounds_that_variant_only():
    metrics = lesson(numpy=LESSON["numpy"] | {"w": 5.0})
    results = gate.check(metrics, {"torch.w": Bound(min=1.9, max=2.1)}, {})
    assert rows(results)[2:] == [
        ("w", "torch", 1.9999996423721313, ">= 1.9", True),
        ("w", "torch", 1.9999996423721313, "<= 2.1", True),
    ]
    assert gate.passed(results)
    assert not gate.passed(gate.check(metrics, {"w": Bound(min=1.9, max=2.1)}, {}))


def test_a_diverged_variant_fails_with_a_message_not_a_crash():
    metrics = lesson(torch=diverged_at(12), parity={"max_abs_w_diff": None})
    results = gate.check(metrics, DEFAULTS, {})
    failed = [(result.metric, result.variant, result.shown) for result in results if not result.passed]
    assert failed == [
        ("diverged", "torch", "true (at epoch 12)"),
        ("abs_error", "torch", "diverged at epoch 12"),
        ("loss", "torch", "diverged at epoch 12"),
        ("parity.max_abs_w_diff", "both", "null (no epochs in common)"),
    ]
    assert "torch    true (at epoch 12)" in gate.format_table(results)


def test_divergence_fails_even_when_no_threshold_names_that_variant():
    results = gate.check(lesson(torch=diverged_at(3)), {"numpy.loss": Bound(max=1.0)}, {})
    assert [(result.metric, result.variant, result.passed) for result in results] == [
        ("diverged", "numpy", True),
        ("diverged", "torch", False),
        ("loss", "numpy", True),
    ]


@pytest.mark.parametrize(
    ("metrics", "shown"),
    [
        (lesson(torch=None), ["missing from metrics.json", "missing (torch not in metrics.json)"]),
        (lesson(torch={"diverged": False}), ["false", "missing"]),
        (lesson(torch=LESSON["torch"] | {"loss": "0.1"}), ["false", "not a number: '0.1'"]),
        (lesson(torch=LESSON["torch"] | {"loss": None}), ["false", "null"]),
        (lesson(torch=LESSON["torch"] | {"diverged": "no"}), ["'no'", "8.98837e-13"]),
    ],
)
def test_a_missing_or_malformed_variant_fails_with_what_is_wrong(metrics, shown):
    results = gate.check(metrics, {"torch.loss": Bound(max=1.0)}, {})
    torch_rows = [result for result in results if result.variant == "torch"]
    assert [result.shown for result in torch_rows] == shown
    assert not gate.passed(results)


def test_metrics_that_are_not_a_metrics_file_fail_every_check():
    results = gate.check({}, DEFAULTS, {})
    assert len(results) == 7 and not any(result.passed for result in results)


def test_a_relative_bound_allows_the_given_fraction_above_the_baseline():
    bound = {"loss": Bound(max_rel_increase=0.1)}
    base = {"HEAD": lesson(numpy=LESSON["numpy"] | {"loss": 1e-12}, torch=LESSON["torch"] | {"loss": 1e-12})}
    now = lesson(numpy=LESSON["numpy"] | {"loss": 1.05e-12}, torch=LESSON["torch"] | {"loss": 1.2e-12})
    results = gate.check(now, bound, base)
    assert rows(results)[2:] == [
        ("loss", "numpy", 1.05e-12, "<= 1.1e-12 (HEAD 1e-12 +10%)", True),
        ("loss", "torch", 1.2e-12, "<= 1.1e-12 (HEAD 1e-12 +10%)", False),
    ]


def test_a_relative_bound_on_a_negative_baseline_still_allows_an_increase_of_its_size():
    base = {"v1": lesson(numpy=LESSON["numpy"] | {"w": -2.0})}
    bound = {"numpy.w": Bound(max_rel_increase=0.1, baseline_rev="v1")}
    assert rows(gate.check(lesson(numpy=LESSON["numpy"] | {"w": -1.85}), bound, base))[2] == (
        "w",
        "numpy",
        -1.85,
        "<= -1.8 (v1 -2 +10%)",
        True,
    )
    assert not gate.check(lesson(numpy=LESSON["numpy"] | {"w": -1.75}), bound, base)[2].passed


def test_a_relative_bound_with_no_baseline_value_passes_but_says_so_and_a_diverged_value_fails():
    bound = {"loss": Bound(max_rel_increase=0.1)}
    results = gate.check(lesson(numpy=diverged_at(7)), bound, {"HEAD": lesson(torch=diverged_at(4))})
    assert [(result.variant, result.shown, result.bound, result.passed) for result in results[2:]] == [
        ("numpy", "diverged at epoch 7", "<= 9.8872e-13 (HEAD 8.98837e-13 +10%)", False),
        ("torch", "8.98837e-13", "HEAD +10%: no baseline (diverged at epoch 4 at HEAD)", True),
    ]


# --- the comparison with a baseline (the git side: tests/integration/test_gate_baseline.py) -------


def test_the_summary_counts_a_metric_on_one_side_only_as_changed_and_each_param_that_differs():
    # As `dvc metrics diff --all --json` and `dvc params diff --json` give them; the tables are DVC's --md.
    metrics = {
        "m.json": {
            "numpy.diverged": {"old": False, "new": True},
            "numpy.loss": {"old": 1e-12, "new": 1e-12, "diff": 0.0},
            "numpy.w": {"old": None, "new": 2.5},
            "old.x": {"old": 1, "new": None},
        }
    }
    params = {"p.yaml": {"train.lr": {"old": 0.1, "new": None}}}
    changes = gate.Comparison("main", metrics, params, "| Path | Metric |\n")
    assert changes.summary() == "3 of 4 metrics changed, 1 param differs"
    summary = "3 of 4 metrics changed, 1 param differs."
    assert changes.markdown() == f"### Compared with main\n\n{summary}\n\n| Path | Metric |\n"
    two = {"p.yaml": {"train.lr": {"old": 0.1, "new": 0.2}, "train.epochs": {"old": 100, "new": 5}}}
    assert gate.Comparison("main", {}, two, "").summary() == "0 of 0 metrics changed, 2 params differ"
