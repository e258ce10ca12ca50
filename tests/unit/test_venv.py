"""What every Python of the venv does at start (gdpipe.venv, installed by make as a .pth line): the tools
on PATH (tests/integration/test_makefile.py), and a git identity for DVC's experiment commits only when git has none."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gdpipe import venv
from support import PROGRAMS

IDENTITY_KEYS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with no identity anywhere (conftest points git's global config at /dev/null)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    for key in IDENTITY_KEYS:
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def identity() -> dict[str, str | None]:
    return {key: os.environ.get(key) for key in IDENTITY_KEYS}


def test_no_identity_gets_gdpipes_for_dvcs_commits(repo):
    venv.supply_git_identity()
    name, email = venv.EXPERIMENT_IDENTITY
    assert identity() == dict(zip(IDENTITY_KEYS, (name, email, name, email), strict=True))
    # git itself now commits with it, and the repository's configuration was not written.
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    author = subprocess.run(["git", "log", "-1", "--format=%an <%ae>"], capture_output=True, text=True, check=True)
    assert author.stdout.strip() == f"{name} <{email}>"
    assert "user." not in (repo / ".git" / "config").read_text()


def test_a_configured_identity_wins(repo):
    subprocess.run(["git", "config", "user.name", "Ada"], check=True)
    subprocess.run(["git", "config", "user.email", "ada@example.org"], check=True)
    venv.supply_git_identity()
    assert identity() == dict.fromkeys(IDENTITY_KEYS)


def test_half_an_identity_keeps_the_half_it_has(repo):
    subprocess.run(["git", "config", "user.name", "Ada"], check=True)
    venv.supply_git_identity()
    assert identity() == {
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": venv.EXPERIMENT_IDENTITY[1],
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": venv.EXPERIMENT_IDENTITY[1],
    }


def test_an_identity_in_the_environment_is_left_alone(repo, monkeypatch):
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Bob")
    venv.supply_git_identity()
    assert os.environ["GIT_AUTHOR_NAME"] == "Bob" and os.environ["GIT_COMMITTER_NAME"] == venv.EXPERIMENT_IDENTITY[0]


@pytest.mark.parametrize(
    ("argv0", "supplied"), [("/x/.venv/bin/dvc", True), ("/x/.venv/bin/mlflow", False), ("", False)]
)
def test_only_dvc_processes_get_an_identity(repo, monkeypatch, argv0, supplied):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setenv("PATH", os.environ["PATH"])  # start() also puts the tools on PATH: restored afterwards
    venv.start()
    assert (os.environ.get("GIT_AUTHOR_NAME") == venv.EXPERIMENT_IDENTITY[0]) is supplied


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["exp", "run", "--temp", "-S", "train.lr=0.1"], True),
        (["exp", "run", "--queue"], True),
        (["queue", "start", "-j", "2"], True),
        (["exp", "run", "-S", "train.lr=0.1"], False),  # in the workspace: no copy, it works
        (["repro"], False),
    ],
)
def test_experiments_dvc_cannot_run_in_a_non_ascii_folder_stop_in_one_line(tmp_path, args, refused):
    folder = tmp_path / "é"
    folder.mkdir()
    program = [sys.executable, PROGRAMS / "refuse_experiments.py", folder, *args]
    done = subprocess.run(program, capture_output=True, text=True)
    if refused:
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.startswith("gdpipe: error: DVC cannot run temporary or queued experiments in a folder")
        assert f"({folder})" in done.stderr and done.stderr.count("\n") == 1
    else:
        assert (done.returncode, done.stdout, done.stderr) == (0, "went on\n", "")
    ascii_folder = str(tmp_path)  # the same command in an ASCII folder goes on
    assert venv.refuse_experiments_dvc_cannot_run(args, ascii_folder) is None


def test_a_non_ascii_value_in_git_config_stops_a_temporary_experiment_in_one_line(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "/srv/é/gdpipe"], check=True)
    (tmp_path / "sub").mkdir()
    program = [sys.executable, PROGRAMS / "refuse_experiments.py", tmp_path / "sub", "exp", "run", "--temp"]
    done = subprocess.run(program, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "the repository's .git/config holds a value that is not ASCII" in done.stderr
    subprocess.run(["git", "-C", str(tmp_path), "remote", "set-url", "origin", "/srv/e/gdpipe"], check=True)
    assert venv.refuse_experiments_dvc_cannot_run(["exp", "run", "--temp"], str(tmp_path / "sub")) is None
