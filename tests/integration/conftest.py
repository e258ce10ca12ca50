"""The integration tier's fixtures: a copy of the repository after a real `dvc repro` (shared, and a private
copy of it), empty sqlite MLflow stores copied from one made once, and make server (team.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import copy_repo, dvc
from team import TeamServer, running_team_server


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
def team_server() -> Iterator[TeamServer]:
    """make server with auth, shared by test_team_server.py and test_tune.py: one per test worker that runs either
    (--dist loadfile keeps each file on one worker), so at most two on two workers."""
    with running_team_server() as server:
        yield server
