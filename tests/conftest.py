"""Shared fixtures: validated params, finished workspaces and reproduced copies of the repo, and a
reaper for child processes. The plain helpers live in support.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from gdpipe.core import config
from gdpipe.track import settings
from support import (
    REPO,
    build_workspace,
    child_env,
    copy_repo,
    dvc,
    free_port,
    load_default_params,
    make,
    src_env,
    with_overrides,
)

# Fixtures that are costly to make (a server, a promoted or published copy of the project) and shared by
# several tests. The tests that use one are an xdist_group named after it: `make test` (--dist loadgroup)
# runs them on one worker, which makes the fixture once instead of once per worker.
SHARED_FIXTURES = (
    "team_server",
    "promoted_repo",
    "reproducible_repo",
    "published",
    "guarded_track_run",
    "s3",
    "pushed",
)


def pytest_configure(config):
    """The suite depends on no one's git configuration or HOME: git and libgit2 (DVC's experiments) read none of
    the tester's files. Set before xdist starts its workers, which inherit it. The tester's pip cache stays in use."""
    home = tempfile.mkdtemp(prefix="gdpipe-tests-home-")
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.environ.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    os.environ.update(HOME=home, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    settings.apply()  # before the test modules, which import mlflow, are collected


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        shared = [name for name in SHARED_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.fixture
def params():
    """The repository's validated params, with `params({"train.lr": 0.1})` for a variation."""

    def make(overrides: dict[str, object] | None = None) -> config.Params:
        return config.Params.model_validate(with_overrides(load_default_params(), overrides or {}))

    return make


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory) -> Path:
    """A copy of the repository after one full `dvc repro` (shared: tests must not modify it)."""
    repo = copy_repo(tmp_path_factory.mktemp("repo") / "repo")
    dvc(repo, "repro")
    return repo


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """`empty_store(db)` puts a new, empty sqlite MLflow store at `db` and returns its URI.

    Making a store's tables runs all of MLflow's migrations (about 2 to 4 s); tests to which a new store
    is incidental start from a copy of one made once. Tests of the first setup itself make their own."""
    from mlflow import MlflowClient

    template = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()

    def place(db: Path) -> str:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)
        return f"sqlite:///{db}"

    return place


@pytest.fixture
def own_reproduced_repo(reproduced_repo, tmp_path, empty_store) -> Path:
    """A private copy of `reproduced_repo` (outputs, DVC cache, MLflow store and all), for tests that change it."""
    repo = tmp_path / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    # The store's experiment points at the original's artifact folder; a private copy gets its own store.
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")
    return repo


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
def reaper():
    """Processes a test starts; any still running when the test ends (it failed half-way) is killed."""
    processes = []
    yield processes.append
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


# --- make server, with basic auth: one per session (test_team_server.py, test_tune.py) ---------------------

ADMIN = "gdpipe-admin"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # the admin's: must appear nowhere but in the environment
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}


@dataclass
class TeamServer:
    url: str
    folder: Path  # SERVER_DIR
    settings: tuple[str, ...]  # make's variables
    outputs: list[str]  # everything make server printed

    def env(self, **extra: str) -> dict[str, str]:
        return src_env(MLFLOW_TRACKING_URI=self.url, **CREDENTIALS) | extra

    def client(self, monkeypatch):
        from mlflow import MlflowClient  # here: conftest is imported before pytest_configure applies MLflow's settings

        for key, value in CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        return MlflowClient(self.url)


@pytest.fixture(scope="session")
def team_server():
    # Not under pytest's tmp folder: when we are root, PostgreSQL runs as the user postgres, which must be
    # able to reach its folder, and pytest makes its folders for root alone.
    root = Path(tempfile.mkdtemp(prefix="gdpipe-team-"))
    root.chmod(0o711)
    port = free_port()
    settings = (f"SERVER_DIR={root / 'server'}", f"SERVER_PORT={port}", "SERVER_AUTH=1")
    started = make(REPO, "server", *settings, env=child_env(**CREDENTIALS))
    server = TeamServer(f"http://127.0.0.1:{port}", root / "server", settings, [started.stdout, started.stderr])
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"export MLFLOW_TRACKING_URI={server.url}\n" in started.stdout
        yield server
    finally:
        stopped = make(REPO, "server-stop", *settings, env=child_env())
        assert stopped.returncode == 0 and "PostgreSQL" in stopped.stdout, stopped.stdout + stopped.stderr
        shutil.rmtree(root)
