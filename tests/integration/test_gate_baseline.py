"""The quality gate against a baseline: metrics.json and params.yaml as git holds them at a revision,
compared through DVC (`dvc metrics diff`, `dvc params diff`) in a temporary git repository; and
`make check` on a copy of this project. The command's files and exit codes: tests/unit/test_gate_command.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gdpipe import gate
from gdpipe.core.command import run_main
from support import LESSON, child_env, lesson, make, params_yaml

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


def test_a_baseline_bound_compares_with_metrics_committed_at_a_revision(gate_dir, capsys):
    init_repo(gate_dir)
    (gate_dir / "metrics.json").unlink()
    commit(gate_dir, "no metrics yet")  # HEAD~2
    for loss in (3e-12, 1e-12):  # HEAD~1, HEAD
        (gate_dir / "metrics.json").write_text(json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": loss})))
        commit(gate_dir, f"loss {loss}")

    def gate_with(loss: float, rev: str) -> int:
        (gate_dir / "metrics.json").write_text(json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": loss})))
        (gate_dir / "params.yaml").write_text(
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


def test_the_report_compares_metrics_and_params_with_the_baseline_as_dvc_diff_shows_them(gate_dir, capsys, monkeypatch):
    init_repo(gate_dir)
    base = lesson(numpy=LESSON["numpy"] | {"loss": 1e-12}, torch=LESSON["torch"] | {"abs_error": 0.004})
    (gate_dir / "metrics.json").write_text(json.dumps(base))
    commit(gate_dir, "baseline")
    # The change: numpy's loss got worse, torch's error better, and the learning rate changed.
    (gate_dir / "metrics.json").write_text(
        json.dumps(lesson(numpy=LESSON["numpy"] | {"loss": 3e-12}, torch=LESSON["torch"] | {"abs_error": 0.001}))
    )
    params = gate_dir / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.01 ", "  lr: 0.02 "))

    assert gate.main([]) == 0  # locally the baseline is HEAD
    assert "compared with HEAD: 2 of 19 metrics changed, 1 param differs\n" in capsys.readouterr().out
    report = (gate_dir / "reports" / "check.md").read_text(encoding="utf-8").splitlines()
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
    assert run(["git", "update-ref", "refs/remotes/origin/main", "HEAD"], gate_dir).returncode == 0
    monkeypatch.setenv("GITHUB_BASE_REF", "main")
    assert gate.main([]) == 0
    assert "compared with origin/main: 2 of 19 metrics changed, 1 param differs\n" in capsys.readouterr().out
    # A default baseline that does not exist is said in the report; one the user names is bad input.
    monkeypatch.setenv("GITHUB_BASE_REF", "release")
    assert gate.main([]) == 0
    unknown = "baseline 'origin/release' is not a revision of this git repository"
    assert f"no comparison: {unknown}\n" in capsys.readouterr().out
    assert f"_No comparison: {unknown}._" in (gate_dir / "reports" / "check.md").read_text(encoding="utf-8")
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
