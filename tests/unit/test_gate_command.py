"""The quality gate as a command: files, the report and verdict, exit codes 0/1/2, in a folder that is no
git repository. Against a baseline, and `make check`: tests/integration/test_gate_baseline.py."""

from __future__ import annotations

import pytest

from gdpipe import gate
from gdpipe.core.command import run_main
from gdpipe.core.config import Bound
from support import LESSON, params_yaml

DEFAULTS = {"abs_error": Bound(max=0.01), "loss": Bound(max=1.0e-4), "parity.max_abs_w_diff": Bound(max=1.0e-5)}


# --- the command: files, report, exit codes ------------------------------------------------------


def test_the_command_prints_the_table_writes_the_report_and_exits_0(gate_dir, capsys):
    assert gate.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "variant", "value", "bound", "result"]
    no_git = "cannot read metrics.json at baseline 'HEAD': this folder is not in a git repository"
    assert f"PASS: all 7 checks passed\nno comparison: {no_git}\nreport: reports/check.md\n" in out
    report = (gate_dir / "reports" / "check.md").read_text(encoding="utf-8")
    comparison = f"### Compared with HEAD\n\n_No comparison: {no_git}._\n"  # the gate goes on without one
    assert report == gate.format_markdown(gate.check(LESSON, DEFAULTS, {}), "check.png", comparison=comparison)
    assert (gate_dir / "reports" / "check.png").read_bytes() == b"\x89PNG\r\n\x1a\n stand-in"


def test_the_command_exits_1_and_names_the_failing_metric_in_the_output_and_the_report(gate_dir, capsys):
    (gate_dir / "params.yaml").write_text(params_yaml("thresholds: {abs_error: {max: 1.0e-9}, loss: {max: 1.0e-4}}"))
    assert gate.main(["--report", "out/pr.md"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 of 6 checks failed: abs_error (numpy), abs_error (torch)" in out
    assert [line.split() for line in out.splitlines() if line.endswith("FAIL")] == [
        ["abs_error", variant, "1.78814e-06", "<=", "1e-09", "FAIL"] for variant in ("numpy", "torch")
    ]
    report = (gate_dir / "out" / "pr.md").read_text(encoding="utf-8")
    assert "| `abs_error` | numpy | 1.78814e-06 | <= 1e-09 | ❌ **FAIL** |" in report
    assert "(pr.png)" in report and (gate_dir / "out" / "pr.png").exists()


def test_without_the_plot_the_report_says_so_and_the_verdict_stands(gate_dir, capsys):
    (gate_dir / "plots" / "curves.png").unlink()
    assert gate.main([]) == 0
    assert "plots/curves.png does not exist (run dvc repro)" in (gate_dir / "reports" / "check.md").read_text(
        encoding="utf-8"
    )
    assert not (gate_dir / "reports" / "check.png").exists()


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        (
            "thresholds: {lossy: {max: 1}}",
            "thresholds: unknown metric 'lossy' (allowed: loss, abs_error, w, prediction, w_star_distance for every "
            "variant",
        ),
        ("thresholds: {numpy.diverged: {max: 0}}", "unknown metric 'numpy.diverged'"),
        ("thresholds: {loss: {min: 1, max: 0.5}}", "thresholds.loss: min must be <= max, got min 1 and max 0.5"),
        ("thresholds: {loss: {max: '0.01'}}", "thresholds.loss.max = '0.01': must be a number"),
        ("thresholds: {loss: {max: .nan}}", "thresholds.loss.max = nan: must be a finite number"),
        ("thresholds: {loss: {max: true}}", "thresholds.loss.max = True: must be a number"),
        ("thresholds: {loss: {}}", "thresholds.loss: sets no bound: give max, min and/or max_rel_increase"),
        (
            "thresholds: {loss: {maximum: 1}}",
            "unknown key 'thresholds.loss.maximum' (allowed here: min, max, max_rel_increase, baseline_rev)",
        ),
        ("thresholds: {loss: {max_rel_increase: -0.1}}", "thresholds.loss.max_rel_increase = -0.1: must be >= 0"),
        ("thresholds: {loss: {max: 1, baseline_rev: main}}", "baseline_rev is used only with max_rel_increase"),
        ("thresholds: {}", "thresholds: sets no threshold"),
        ("thresholds: [loss]", "thresholds = a list: must be a mapping"),
    ],
)
def test_invalid_thresholds_are_one_line_and_exit_2(gate_dir, capsys, thresholds, message):
    (gate_dir / "params.yaml").write_text(params_yaml(thresholds))
    assert run_main(gate.main, []) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gdpipe: error: params.yaml: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not (gate_dir / "reports").exists()


def test_a_missing_metrics_file_is_bad_input_not_a_failure(gate_dir, capsys):
    (gate_dir / "metrics.json").unlink()
    assert run_main(gate.main, []) == 2
    assert (
        capsys.readouterr().err
        == "gdpipe: error: metrics.json: no such file (run the stage that writes it: dvc repro)\n"
    )
