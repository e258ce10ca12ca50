"""The Makefile as a user meets it: `make help`, what `make ui` binds, the venv on PATH, `make promote` and `make ui`
from a path with a space, make sweep from a folder whose path is not ASCII. What CI runs: test_ci_workflow.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from servers import served

from support import REPO, VENV_BIN, copy_repo, make, stages_run


def test_the_mlflow_ui_listens_on_localhost_unless_the_user_asks_otherwise():
    """`make ui` binds 127.0.0.1; UI_HOST=0.0.0.0 is the user's explicit choice. The only other servers gdpipe
    starts are make server's (team_server/, on 127.0.0.1 too: test_team_server.py) and make serve's
    (track/registry.py, whose --host, which the Makefile does not set, is 127.0.0.1 by default)."""

    def ui_command(*overrides: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", "ui", *overrides],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert " --host 127.0.0.1 " in ui_command()
    assert " --host 0.0.0.0 " in ui_command("UI_HOST=0.0.0.0")
    sources = [REPO / "Makefile", *(REPO / "src" / "gdpipe").rglob("*.py"), *(REPO / "stages").glob("*.py")]
    starters = [
        path.name for path in sources if re.search(r"mlflow\W+(ui|server)\b|0\.0\.0\.0|host=", path.read_text())
    ]
    no_other = ["Makefile", "mlflow_server.py", "postgres.py", "registry.py"]  # no other file starts a server
    assert sorted(starters) == no_other, starters
    assert 'add_argument("--host", default="127.0.0.1")' in (REPO / "src/gdpipe/track/registry.py").read_text()
    assert "--host" not in (REPO / "Makefile").read_text().split("\nserve:")[1].split("\n\n")[0]


def test_make_help_lists_every_target_a_user_runs():
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    listed = [line.split()[0] for line in done.stdout.splitlines()]
    targets = [
        "help",
        "venv",
        "repro",
        "test",
        "test-unit",
        "lint",
        "check",
        "promote",
        "reproduce",
        "serve",
        "server",
        "server-stop",
    ]
    targets += ["push", "pull", "bench", "ui", "sweep", "tune", "clean"]
    assert listed == targets
    assert all(len(line.split(maxsplit=1)) == 2 for line in done.stdout.splitlines())  # each with what it does


@pytest.fixture
def spaced_repo(reproduced_repo, tmp_path) -> Path:
    """A reproduced copy of the project in a folder whose path has a space."""
    repo = tmp_path / "my projects" / "gdpipe"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    (repo / "mlruns").mkdir()
    return repo


def test_make_promote_and_make_ui_work_from_a_path_with_a_space(spaced_repo):
    params = (spaced_repo / "params.yaml").read_text()
    # A new seed (the same grid) and one more epoch: every stage reruns.
    (spaced_repo / "params.yaml").write_text(
        params.replace("  seed: 0\n", "  seed: 1\n").replace("  epochs: 100\n", "  epochs: 101\n")
    )
    done = make(spaced_repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stages_run(done.stdout) == {"generate", "train@numpy", "train@torch", "evaluate", "track"}
    assert "PASS: all 7 checks passed" in done.stdout and done.stdout.count(": new run ") == 2
    assert done.stdout.endswith("gdpipe-torch: version 1 is champion (was none)\n")
    assert (spaced_repo / "mlruns" / "mlflow.db").exists()
    with served(spaced_repo, "ui", "UI_PORT") as url:
        experiment = f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=gradient-descent"
        with urllib.request.urlopen(experiment) as answer:
            assert json.load(answer)["experiment"]["name"] == "gradient-descent"  # the UI reads this project's store


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (None, f"{VENV_BIN}{os.pathsep}{os.defpath}"),  # no PATH at all: the venv, then the system's default
        ("/usr/bin::/bin", f"{VENV_BIN}{os.pathsep}/usr/bin::/bin"),  # an empty entry (this folder) stays
        (f"{VENV_BIN}{os.pathsep}/bin", f"{VENV_BIN}{os.pathsep}/bin"),  # already first: left as it is
    ],
    ids=["unset", "empty-entry", "already-first"],
)
def test_the_venvs_python_puts_its_tools_first_on_path_as_activating_it_would(path, expected):
    """So that DVC's queue workers, started as a bare `dvc`, are the venv's (the .pth line make installs)."""
    env = {"HOME": os.environ.get("HOME", "/")} | ({} if path is None else {"PATH": path})
    command = [str(VENV_BIN / "python"), "-c", "import os; print(os.environ['PATH'])"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


def test_make_sweep_in_a_folder_whose_path_is_not_ascii_stops_at_once_with_the_cause(tmp_path):
    """DVC's experiment executor writes the cache's path into its copy's config as ASCII: in such a folder every
    queued run failed, said only in a worker's log (.dvc/tmp/exps/celery/*.out). make sweep says it first and
    queues nothing."""
    repo = copy_repo(tmp_path / "é" / "project")
    done = make(repo, "sweep", "SWEEP_LRS=0.05", timeout=600)
    assert done.returncode == 2
    error, make_line = done.stderr.splitlines()
    assert error.startswith(
        "gdpipe: error: DVC cannot run temporary or queued experiments in a folder whose path is not"
    )
    assert f"({repo.resolve()})" in error and "clone the project to an ASCII path" in error
    assert make_line.endswith("Error 2") and "Queued experiment" not in done.stdout
    assert not (repo / ".dvc" / "tmp" / "exps").exists()
