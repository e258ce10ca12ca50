"""The quality gate: thresholds in params.yaml, checks on metrics.json, the report, exit codes 0/1/2.

Unit tests on synthetic metrics first; then the command on files in a temporary folder, a baseline
read through DVC from a temporary git repository, and last `make check` on a copy of this project
(conftest's `own_reproduced_repo`).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gdpipe import gate
from gdpipe.core import config
from gdpipe.core.command import InputError, run_main
from gdpipe.core.config import Bound
from support import REPO

# metrics.json of the lesson's run (100 epochs, lr 0.01, x = 1..4, y = 2x), as evaluate writes it.
# Both variants end the lesson on the same float32 w, so their sections are equal.
LESSON_VARIANT = {
    "diverged": False,
    "epochs_trained": 100,
    "w": 1.9999996423721313,
    "loss": 8.988365607365267e-13,
    "prediction": 9.999998211860657,
    "abs_error": 1.7881393432617188e-06,
    "w_star_distance": 3.5762786865234375e-07,
}
LESSON = {
    "numpy": dict(LESSON_VARIANT),
    "torch": dict(LESSON_VARIANT),
    "optimum": {"w_star": 2.0, "prediction": 10.0, "true_value": 10.0, "x": 5.0},
    "parity": {"max_abs_w_diff": 5.960464477539063e-08},
}

DEFAULTS = {"abs_error": Bound(max=0.01), "loss": Bound(max=1.0e-4), "parity.max_abs_w_diff": Bound(max=1.0e-5)}


def lesson(**changes: dict) -> dict:
    """A deep copy of LESSON with whole sections replaced (numpy={...}) or removed (numpy=None)."""
    metrics = copy.deepcopy(LESSON)
    for section, content in changes.items():
        if content is None:
            del metrics[section]
        else:
            metrics[section] = content
    return metrics


def diverged_at(epoch: int) -> dict:
    """A variant section as evaluate writes it for a run whose w overflowed at `epoch`."""
    return {"diverged": True, "epochs_trained": epoch - 1, "diverged_at_epoch": epoch}


def rows(results: list[gate.Result]) -> list[tuple]:
    return [(result.metric, result.variant, result.value, result.bound, result.passed) for result in results]


def params_yaml(thresholds: str | None) -> str:
    """This project's params.yaml with its thresholds section replaced by the YAML text given (None: left out)."""
    document = YAML(typ="safe").load((REPO / "params.yaml").read_text(encoding="utf-8"))
    # JSON is YAML 1.2: the other sections are kept exactly, the thresholds text is the case under test.
    lines = [f"{section}: {json.dumps(value)}" for section, value in document.items() if section != "thresholds"]
    return "\n".join(lines + ([thresholds] if thresholds is not None else [])) + "\n"


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


# --- the command: files, report, exit codes ------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with params.yaml (default thresholds), the lesson's metrics.json and a stand-in plot."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "metrics.json").write_text(json.dumps(LESSON))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n stand-in")
    return tmp_path


def test_the_command_prints_the_table_writes_the_report_and_exits_0(workdir, capsys):
    assert gate.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "variant", "value", "bound", "result"]
    assert "PASS: all 7 checks passed\nreport: reports/check.md\n" in out
    report = (workdir / "reports" / "check.md").read_text(encoding="utf-8")
    assert report == gate.format_markdown(gate.check(LESSON, DEFAULTS, {}), "check.png")
    assert (workdir / "reports" / "check.png").read_bytes() == b"\x89PNG\r\n\x1a\n stand-in"


def test_the_command_exits_1_and_names_the_failing_metric_in_the_output_and_the_report(workdir, capsys):
    (workdir / "params.yaml").write_text(params_yaml("thresholds: {abs_error: {max: 1.0e-9}, loss: {max: 1.0e-4}}"))
    assert gate.main(["--report", "out/pr.md"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 of 6 checks failed: abs_error (numpy), abs_error (torch)" in out
    assert [line.split() for line in out.splitlines() if line.endswith("FAIL")] == [
        ["abs_error", variant, "1.78814e-06", "<=", "1e-09", "FAIL"] for variant in ("numpy", "torch")
    ]
    report = (workdir / "out" / "pr.md").read_text(encoding="utf-8")
    assert "| `abs_error` | numpy | 1.78814e-06 | <= 1e-09 | ❌ **FAIL** |" in report
    assert "(pr.png)" in report and (workdir / "out" / "pr.png").exists()


def test_without_the_plot_the_report_says_so_and_the_verdict_stands(workdir, capsys):
    (workdir / "plots" / "curves.png").unlink()
    assert gate.main([]) == 0
    assert "plots/curves.png does not exist (run dvc repro)" in (workdir / "reports" / "check.md").read_text(
        encoding="utf-8"
    )
    assert not (workdir / "reports" / "check.png").exists()


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
def test_invalid_thresholds_are_one_line_and_exit_2(workdir, capsys, thresholds, message):
    (workdir / "params.yaml").write_text(params_yaml(thresholds))
    assert run_main(gate.main, []) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gdpipe: error: params.yaml: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not (workdir / "reports").exists()


def test_a_missing_metrics_file_is_bad_input_not_a_failure(workdir, capsys):
    (workdir / "metrics.json").unlink()
    assert run_main(gate.main, []) == 2
    assert (
        capsys.readouterr().err
        == "gdpipe: error: metrics.json: no such file (run the stage that writes it: dvc repro)\n"
    )


# --- a baseline read through DVC from a git repository -------------------------------------------


def isolated_env() -> dict[str, str]:
    """The environment for git, DVC and make in a temporary repository: no outer repo, user config or telemetry."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "DVC_")) and key != "PYTHONPATH"
    }
    identity = {"GIT_AUTHOR_NAME": "gdpipe tests", "GIT_AUTHOR_EMAIL": "tests@gdpipe.invalid"}
    identity |= {"GIT_COMMITTER_NAME": "gdpipe tests", "GIT_COMMITTER_EMAIL": "tests@gdpipe.invalid"}
    return (
        env
        | identity
        | {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=isolated_env() | (env or {}), capture_output=True, text=True, timeout=300
    )


def commit(repo: Path, message: str) -> None:
    for command in (["git", "add", "-A"], ["git", "commit", "-q", "--no-verify", "-m", message]):
        done = run(command, repo)
        assert done.returncode == 0, done.stderr


def test_a_baseline_bound_compares_with_metrics_committed_at_a_revision(workdir, capsys, monkeypatch):
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        assert run(command, workdir).returncode == 0
    (workdir / ".gitignore").write_text("/reports/\n")
    (workdir / "metrics.json").unlink()
    commit(workdir, "no metrics yet")  # HEAD~2
    for loss in (3e-12, 1e-12):  # HEAD~1, HEAD
        (workdir / "metrics.json").write_text(json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": loss})))
        commit(workdir, f"loss {loss}")
    monkeypatch.delenv("DVC_ROOT", raising=False)

    def gate_with(loss: float, rev: str) -> int:
        (workdir / "metrics.json").write_text(json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": loss})))
        (workdir / "params.yaml").write_text(
            params_yaml(f"thresholds: {{numpy.loss: {{max_rel_increase: 0.5, baseline_rev: '{rev}'}}}}")
        )
        return run_main(gate.main, [])

    assert gate_with(1.4e-12, "HEAD") == 0
    assert "loss      numpy    1.4e-12  <= 1.5e-12 (HEAD 1e-12 +50%)  pass" in capsys.readouterr().out
    assert gate_with(1.6e-12, "HEAD") == 1
    assert "loss      numpy    1.6e-12  <= 1.5e-12 (HEAD 1e-12 +50%)  FAIL" in capsys.readouterr().out
    assert gate_with(1.6e-12, "HEAD~1") == 0
    assert "<= 4.5e-12 (HEAD~1 3e-12 +50%)  pass" in capsys.readouterr().out
    assert gate_with(1.0e-12, "no-such-branch") == 2
    assert (
        capsys.readouterr().err
        == "gdpipe: error: thresholds: baseline_rev 'no-such-branch' is not a revision of this git repository\n"
    )
    assert gate_with(1.0e-12, "HEAD~2") == 2
    assert (
        capsys.readouterr().err
        == "gdpipe: error: thresholds: metrics.json does not exist at baseline_rev 'HEAD~2'; commit it there first\n"
    )


# --- `make check` on a copy of this project ------------------------------------------------------


def make_check(project: Path) -> subprocess.CompletedProcess:
    # -o: the shared .venv is installed already; never let a test reinstall it.
    return run(["make", "-o", ".venv/.installed", "check"], project)


def set_in_params(project: Path, old: str, new: str) -> None:
    path = project / "params.yaml"
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_make_check_passes_a_threshold_edit_reruns_nothing_and_5_epochs_fail(own_reproduced_repo):
    # conftest's copy of this project after one `dvc repro`; three steps, as each rerun costs seconds.
    project = own_reproduced_repo
    done = make_check(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: all 7 checks passed" in done.stdout
    assert (project / "reports" / "check.png").read_bytes() == (project / "plots" / "curves.png").read_bytes()
    assert "![Loss and w per epoch of both variants](check.png)" in (project / "reports" / "check.md").read_text(
        encoding="utf-8"
    )

    # A tighter bound reruns no stage, and the gate alone fails on it.
    set_in_params(project, "loss: {max: 1.0e-4}", "loss: {max: 1.0e-13}")
    status = run([".venv/bin/dvc", "status", "--json"], project)
    assert (status.returncode, json.loads(status.stdout)) == (0, {})
    gated = run([".venv/bin/python", "-m", "gdpipe.gate"], project, {"PYTHONPATH": "src"})
    assert gated.returncode == 1, gated.stderr
    assert "FAIL: 2 of 7 checks failed: loss (numpy), loss (torch)" in gated.stdout

    # Back to the default bound, but 5 epochs: w is far from 2, and the gate names what missed.
    set_in_params(project, "loss: {max: 1.0e-13}", "loss: {max: 1.0e-4}")
    set_in_params(project, "epochs: 100", "epochs: 5")
    done = make_check(project)
    assert done.returncode == 2, done.stdout + done.stderr  # the gate exits 1; make reports any failed command as 2
    failed = {tuple(line.split()[:2]) for line in done.stdout.splitlines() if line.endswith("FAIL")}
    assert failed == {("abs_error", "numpy"), ("abs_error", "torch"), ("loss", "numpy"), ("loss", "torch")}
    assert "FAIL: 4 of 7 checks failed: abs_error (numpy), abs_error (torch), loss (numpy), loss (torch)" in done.stdout
    report = (project / "reports" / "check.md").read_text(encoding="utf-8")
    assert report.startswith(
        "## gdpipe quality gate: FAIL\n\n"
        "4 of 7 checks failed: abs_error (numpy), abs_error (torch), loss (numpy), loss (torch)."
    )
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["numpy"]["epochs_trained"] == 5
    assert f"| `abs_error` | numpy | {gate._number(metrics['numpy']['abs_error'])} | <= 0.01 | ❌ **FAIL** |" in report
