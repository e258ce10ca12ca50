"""make server for the tests, with basic auth: the admin's credentials, and the running stack as a context.

Stopped afterwards, and also when the test process is killed (servers.undone_if_this_process_dies). Its fixture
is `team_server` in integration/conftest.py, shared by test_team_server.py and test_tune.py."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from servers import undone_if_this_process_dies

from support import REPO, child_env, free_port, make, src_env

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
        from mlflow import MlflowClient  # here: conftest imports this module before MLflow's settings are applied

        for key, value in CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        return MlflowClient(self.url)


@contextlib.contextmanager
def running_team_server() -> Iterator[TeamServer]:
    """`make server` with auth on a free port, in a folder the user postgres can reach (not under pytest's tmp
    folder, which is root's alone when we are root); `make server-stop` and the folder removed afterwards, also
    if the test process is killed."""
    root = Path(tempfile.mkdtemp(prefix="gdpipe-team-"))
    root.chmod(0o711)
    settings = (f"SERVER_DIR={root / 'server'}", f"SERVER_PORT={free_port()}", "SERVER_AUTH=1")
    stopped_and_removed = 'make -o .venv/.installed server-stop "$@"; rm -rf "$0"'
    with undone_if_this_process_dies(["sh", "-c", stopped_and_removed, str(root), *settings]):
        started = make(REPO, "server", *settings, env=child_env(**CREDENTIALS))
        url = f"http://127.0.0.1:{settings[1].split('=')[1]}"
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            assert f"export MLFLOW_TRACKING_URI={url}\n" in started.stdout
            yield TeamServer(url, root / "server", settings, [started.stdout, started.stderr])
        finally:
            stopped = make(REPO, "server-stop", *settings, env=child_env())
    assert stopped.returncode == 0 and "PostgreSQL" in stopped.stdout, stopped.stdout + stopped.stderr
    shutil.rmtree(root)
