"""`make server` and `make server-stop` themselves: a folder named with a space, a % and an accent; a start
that fails stops what it started and says so in one line; server-stop names where it looked.

Each test starts servers of its own (not test_team_server's shared one), in a folder the fixture stops and
removes, also when the test fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from servers import undone_if_this_process_dies

from support import REPO, assert_one_error_line, child_env, free_port, make, wait_for

ADMIN = "gdpipe-admin"
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": f"pw-{uuid.uuid4().hex}"}
MAKE_FAILED = "make: *** [Makefile:"  # make's own line after a recipe that failed


@pytest.fixture
def server_root():
    """A folder for SERVER_DIRs that the user postgres can reach (as in test_team_server); afterwards every
    server started under it is stopped with make server-stop, and the folder removed."""
    root = Path(tempfile.mkdtemp(prefix="gdpipe-start-"))
    root.chmod(0o711)
    each_stopped = 'find "$1" -name PG_VERSION | while IFS= read -r f; do make server-stop SERVER_DIR="${f%/*/*}"; done'
    with undone_if_this_process_dies(["sh", "-c", each_stopped, "sh", str(root)]):
        try:
            yield root
        finally:
            for cluster in root.rglob("PG_VERSION"):
                make(REPO, "server-stop", f"SERVER_DIR={cluster.parent.parent}", env=child_env())
            shutil.rmtree(root)


def processes_using(folder: Path) -> list[str]:
    """The command lines of the processes whose command line or environment names `folder`: PostgreSQL's
    postmaster (-D), the `mlflow server` and its gunicorn master and workers (MLFLOW_ARTIFACTS_DESTINATION)."""
    name, found = os.fsencode(folder), []
    for process in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # ended meanwhile, or another user's environment
            command = (process / "cmdline").read_bytes()
            if process.name.isdigit() and (name in command or name in (process / "environ").read_bytes()):
                found.append(os.fsdecode(command.replace(b"\0", b" ")))
    return found


def command_stderr(done: subprocess.CompletedProcess) -> str:
    """What the command printed on stderr, without make's own last line (`make: *** [...] Error 2`)."""
    *said, last = done.stderr.splitlines(keepends=True)
    assert last.startswith(MAKE_FAILED) and last.endswith("Error 2\n"), done.stderr
    return "".join(said)


def test_a_folder_named_with_a_space_a_percent_and_an_accent(server_root, monkeypatch):
    """Basic auth on such a folder (its database URI is percent-encoded, and the auth app's ini doubles the %):
    the server answers an authenticated call and keeps an artifact there; server-stop ends every process."""
    folder = server_root / "gd pipe 100% é" / "server"
    port = free_port()
    settings = (f"SERVER_DIR={folder}", f"SERVER_PORT={port}")
    started = make(REPO, "server", *settings, "SERVER_AUTH=1", env=child_env(**CREDENTIALS))
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"make server-stop SERVER_DIR={shlex.quote(str(folder))} stops it" in started.stdout
    url = f"http://127.0.0.1:{port}"
    me = f"{url}/api/2.0/mlflow/users/get?username={ADMIN}"
    answer = requests.get(me, auth=(ADMIN, CREDENTIALS["MLFLOW_TRACKING_PASSWORD"]), timeout=30)
    assert answer.status_code == 200 and answer.json()["user"]["is_admin"], answer.text
    assert requests.get(me, timeout=30).status_code == 401  # it is the auth app that answered
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(url)
    run = client.create_run(client.create_experiment("accents")).info.run_id
    client.log_text(run, "é 100%", "note.txt")  # through the server, into its artifacts folder
    (stored,) = (folder / "artifacts").rglob("note.txt")
    assert stored.read_text() == "é 100%"
    running = processes_using(folder)
    assert any("postgres" in command and "-D" in command for command in running), running
    assert any("gunicorn" in command for command in running), running

    elsewhere = f"nowhere-{uuid.uuid4().hex}"  # relative: make's folder is the checkout
    missed = make(REPO, "server-stop", f"SERVER_DIR={elsewhere}", env=child_env())
    assert missed.returncode == 0, missed.stderr
    assert f"nothing runs in {REPO / elsewhere}; " in missed.stdout
    assert f"a server runs in {folder}: make server-stop SERVER_DIR={shlex.quote(str(folder))}" in missed.stdout
    assert not (REPO / elsewhere).exists()
    assert requests.get(me, timeout=30).status_code == 401  # still runs

    stopped = make(REPO, "server-stop", *settings, env=child_env())
    assert stopped.returncode == 0 and f"stopped MLflow and PostgreSQL of {folder}\n" in stopped.stdout, stopped
    assert processes_using(folder) == []


def test_a_port_taken_before_the_start_is_one_line_and_starts_nothing(server_root):
    folder = server_root / "server"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = make(REPO, "server", f"SERVER_DIR={folder}", f"SERVER_PORT={port}", env=child_env())
    assert done.returncode == 2
    said = command_stderr(done)
    assert_one_error_line(said, f"cannot listen on 127.0.0.1:{port} (Address already in use)", "SERVER_PORT=")
    assert "stopped" not in said and not folder.exists()  # checked before anything was made or started
    stop = make(REPO, "server-stop", f"SERVER_DIR={folder}", env=child_env())
    assert stop.stdout.splitlines()[-1].startswith(f"nothing runs in {folder}; "), stop.stdout


def test_a_port_taken_after_the_check_stops_the_postgresql_it_started(server_root):
    """The port is taken once PostgreSQL runs, after make server checked it: gunicorn cannot listen, and the
    line names the port and says that PostgreSQL was stopped; no process of the folder is left."""
    folder = server_root / "server"
    port = free_port()
    command = ["make", "-o", ".venv/.installed", "server", f"SERVER_DIR={folder}", f"SERVER_PORT={port}"]
    server = subprocess.Popen(  # a session of its own, to stop together if the test stops early
        command,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for((folder / "postgres" / "postmaster.pid").exists, server, 120, "PostgreSQL to start")
        # Before MLflow's server has even imported MLflow (seconds), so gunicorn finds the port taken.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            _, stderr = server.communicate(timeout=300)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # make server stops what it started; the fixture, the rest
            server.wait(timeout=60)
    assert server.returncode == 2
    said = command_stderr(subprocess.CompletedProcess(command, 2, "", stderr))
    assert_one_error_line(said, f"cannot listen on 127.0.0.1:{port} (taken since make server checked it)")
    assert said.endswith("; stopped PostgreSQL, which it had started\n"), said
    assert processes_using(folder) == []
    assert not (folder / "postgres" / "postmaster.pid").exists() and not (folder / "mlflow.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: PostgreSQL then runs as the user postgres")
def test_a_folder_the_user_postgres_cannot_reach_is_one_line(server_root):
    closed = server_root / "closed"
    closed.mkdir(mode=0o700)
    folder = closed / "server"
    done = make(REPO, "server", f"SERVER_DIR={folder}", f"SERVER_PORT={free_port()}", env=child_env())
    assert done.returncode == 2
    said = command_stderr(done)
    assert_one_error_line(said, f"cannot reach {folder / 'postgres'} (a folder above it is closed", "chmod o+x")
    assert processes_using(folder) == []
