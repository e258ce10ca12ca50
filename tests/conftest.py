"""Fixtures of both tiers: validated params, a finished workspace made in this process, the gate's folder,
and a reaper for child processes. The integration tier's own (reproduced copies of the repository, an
empty MLflow store) are in integration/conftest.py; the plain helpers in support.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from servers import killed_if_this_process_dies

from gdpipe.core import config
from gdpipe.track import settings
from support import LESSON, REPO, build_workspace, load_default_params, with_overrides


def pytest_configure(config):
    """The suite depends on no one's git configuration or HOME: git and libgit2 (DVC's experiments) read none of
    the tester's files. Set before xdist starts its workers, which inherit it. The tester's pip cache stays in use."""
    home = tempfile.mkdtemp(prefix="gdpipe-tests-home-")
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.environ.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    os.environ.update(HOME=home, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    settings.apply()  # before the test modules, which import mlflow, are collected


@pytest.fixture
def params():
    """The repository's validated params, with `params({"train.lr": 0.1})` for a variation."""

    def make(overrides: dict[str, object] | None = None) -> config.Params:
        return config.Params.model_validate(with_overrides(load_default_params(), overrides or {}))

    return make


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """Finished outputs of generate, train and evaluate for the lesson's params, made in this process
    (shared: tests copy it before changing anything)."""
    return build_workspace(tmp_path_factory.mktemp("workspace") / "ws")


@pytest.fixture
def own_workspace(workspace, tmp_path) -> Path:
    """A private copy of `workspace`."""
    return Path(shutil.copytree(workspace, tmp_path / "ws"))


@pytest.fixture
def gate_dir(tmp_path, monkeypatch):
    """A folder for the gate with params.yaml (default thresholds), the lesson's metrics.json and a stand-in
    plot; no git repository, and no baseline set by the environment (CI sets GITHUB_BASE_REF on pull requests)."""
    monkeypatch.chdir(tmp_path)
    for name in ("GDPIPE_BASELINE", "GITHUB_BASE_REF", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "metrics.json").write_text(json.dumps(LESSON))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n stand-in")
    return tmp_path


@pytest.fixture
def reaper():
    """Processes a test starts; any still running when the test ends (it failed half-way) is killed, and so is
    each one if the test process itself is killed (servers.killed_if_this_process_dies)."""
    processes = []
    with contextlib.ExitStack() as watchdogs:

        def reap(process: subprocess.Popen) -> None:
            processes.append(process)
            watchdogs.enter_context(killed_if_this_process_dies(process))

        yield reap
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
