"""The quality gate as a command: files, the report and verdict, exit codes 0/1/2; a baseline read
through DVC from a temporary git repository; and `make check` on a copy of this project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gdpipe import gate
from gdpipe.core.command import run_main
from gdpipe.core.config import Bound
from support import LESSON, REPO, child_env, lesson, make, params_yaml

DEFAULTS = {"abs_error": Bound(max=0.01), "loss": Bound(max=1.0e-4), "parity.max_abs_w_diff": Bound(max=1.0e-5)}


# --- the command: files, report, exit codes ------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with params.yaml (default thresholds), the lesson's metrics.json and a stand-in plot; no git
    repository, and no baseline set by the environment (CI sets GITHUB_BASE_REF on pull requests)."""
    monkeypatch.chdir(tmp_path)
    for name in ("GDPIPE_BASELINE", "GITHUB_BASE_REF", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "metrics.json").write_text(json.dumps(LESSON))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n stand-in")
    return tmp_path


def test_the_command_prints_the_table_writes_the_report_and_exits_0(workdir, capsys):
    assert gate.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "variant", "value", "bound", "result"]
    no_git = "cannot read metrics.json at baseline 'HEAD': this folder is not in a git repository"
    assert f"PASS: all 7 checks passed\nno comparison: {no_git}\nreport: reports/check.md\n" in out
    report = (workdir / "reports" / "check.md").read_text(encoding="utf-8")
    comparison = f"### Compared with HEAD\n\n_No comparison: {no_git}._\n"  # the gate goes on without one
    assert report == gate.format_markdown(gate.check(LESSON, DEFAULTS, {}), "check.png", comparison=comparison)
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
    """The environment for git, DVC and make in a temporary repository: child_env (this venv, no DVC,
    MLflow or make settings, no telemetry) without an outer repository or the user's git config."""
    env = {key: value for key, value in child_env().items() if not key.startswith("GIT_") and key != "PYTHONPATH"}
    identity = {"GIT_AUTHOR_NAME": "gdpipe tests", "GIT_AUTHOR_EMAIL": "tests@gdpipe.invalid"}
    identity |= {"GIT_COMMITTER_NAME": "gdpipe tests", "GIT_COMMITTER_EMAIL": "tests@gdpipe.invalid"}
    return env | identity | {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=isolated_env() | (env or {}), capture_output=True, text=True, timeout=300
    )


def commit(repo: Path, message: str) -> None:
    for command in (["git", "add", "-A"], ["git", "commit", "-q", "--no-verify", "-m", message]):
        done = run(command, repo)
        assert done.returncode == 0, done.stderr


def init_repo(folder: Path) -> None:
    """git and DVC in `folder`; the gate's reports are not committed."""
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        assert run(command, folder).returncode == 0
    (folder / ".gitignore").write_text("/reports/\n")


def test_a_baseline_bound_compares_with_metrics_committed_at_a_revision(workdir, capsys):
    init_repo(workdir)
    (workdir / "metrics.json").unlink()
    commit(workdir, "no metrics yet")  # HEAD~2
    for loss in (3e-12, 1e-12):  # HEAD~1, HEAD
        (workdir / "metrics.json").write_text(json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": loss})))
        commit(workdir, f"loss {loss}")

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


def test_the_report_compares_metrics_and_params_with_the_baseline_as_dvc_diff_shows_them(workdir, capsys, monkeypatch):
    init_repo(workdir)
    base = lesson(numpy=LESSON["numpy"] | {"loss": 1e-12}, torch=LESSON["torch"] | {"abs_error": 0.004})
    (workdir / "metrics.json").write_text(json.dumps(base))
    commit(workdir, "baseline")
    # The change: numpy's loss got worse, torch's error better, and the learning rate changed.
    (workdir / "metrics.json").write_text(
        json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": 3e-12}, torch=LESSON["torch"] | {"abs_error": 0.001}))
    )
    params = workdir / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.01 ", "  lr: 0.02 "))

    assert gate.main([]) == 0  # locally the baseline is HEAD
    assert "compared with HEAD: 2 of 19 metrics changed, 1 param differs\n" in capsys.readouterr().out
    report = (workdir / "reports" / "check.md").read_text(encoding="utf-8").splitlines()
    start = report.index("### Compared with HEAD")
    assert report[start : start + 4] == ["### Compared with HEAD", "", "2 of 19 metrics changed, 1 param differs.", ""]
    # DVC's tables (`dvc metrics diff --md`, `dvc params diff --md`) pad their cells; compare the cells.
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in report[start:] if line.startswith("| ")]
    assert table[0] == ["Path", "Metric", "HEAD", "workspace", "Change"]
    rows = {row[1]: row for row in table if row[0] == "metrics.json"}
    assert len(rows) == 19
    assert rows["numpy.loss"] == ["metrics.json", "numpy.loss", "1e-12", "3e-12", "2e-12"]  # worse
    assert rows["torch.abs_error"] == ["metrics.json", "torch.abs_error", "0.004", "0.001", "-0.003"]  # better
    assert rows["numpy.w"] == ["metrics.json", "numpy.w", "1.9999996423721313", "1.9999996423721313", "0.0"]
    assert rows["torch.loss"] == ["metrics.json", "torch.loss", "8.98837e-13", "8.98837e-13", "0.0"]
    assert rows["torch.diverged"] == ["metrics.json", "torch.diverged", "False", "False", "0"]
    assert [row for row in table if row[0] == "params.yaml"] == [["params.yaml", "train.lr", "0.01", "0.02"]]
    assert report[-1] == "![Loss and w per epoch of both variants](check.png)"

    # In a pull request's CI run the baseline is the target branch, origin/<GITHUB_BASE_REF>.
    assert run(["git", "update-ref", "refs/remotes/origin/main", "HEAD"], workdir).returncode == 0
    monkeypatch.setenv("GITHUB_BASE_REF", "main")
    assert gate.main([]) == 0
    assert "compared with origin/main: 2 of 19 metrics changed, 1 param differs\n" in capsys.readouterr().out
    # A default baseline that does not exist is said in the report; one the user names is bad input.
    monkeypatch.setenv("GITHUB_BASE_REF", "release")
    assert gate.main([]) == 0
    unknown = "baseline 'origin/release' is not a revision of this git repository"
    assert f"no comparison: {unknown}\n" in capsys.readouterr().out
    assert f"_No comparison: {unknown}._" in (workdir / "reports" / "check.md").read_text(encoding="utf-8")
    monkeypatch.setenv("GDPIPE_BASELINE", "v2")
    assert run_main(gate.main, []) == 2
    assert capsys.readouterr().err == "gdpipe: error: --baseline 'v2' is not a revision of this git repository\n"


# --- `make check` on a copy of this project ------------------------------------------------------


def make_check(project: Path) -> subprocess.CompletedProcess:
    return make(project, "check", env=isolated_env(), timeout=300)


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
