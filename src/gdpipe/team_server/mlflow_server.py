"""The MLflow server of a stack: `mlflow server` on its PostgreSQL, proxying the artifacts into its folder, in
a session of its own; waited for until it answers, found again by its recorded process group, stopped."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from gdpipe.core.command import InputError
from gdpipe.core.wait import wait_until
from gdpipe.team_server import postgres
from gdpipe.team_server.stack import Stack, last_line, tail

START_TIMEOUT_S = 90
OTHER_PORT = "make server SERVER_PORT=<another port>"


def running(stack: Stack) -> tuple[int, str] | None:
    """The process group and URL of the MLflow server this stack started, if it still runs."""
    try:
        pid, url = stack.mlflow_pid.read_text().split()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leads = os.getpgid(int(pid)) == int(pid)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    # Ours: an `mlflow server` whose artifacts are in this folder (a pid may have been reused since).
    ours = leads and b"server" in command and os.fsencode(stack.artifacts) in command
    return (int(pid), url) if ours else None


def check_port(host: str, port: int) -> None:
    """Before anything starts: else the health check could be answered by whoever has the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InputError(f"cannot listen on {host}:{port} ({err.strerror}): {OTHER_PORT}") from None


def start(stack: Stack, host: str, port: int, auth_env: dict[str, str], workers: int) -> subprocess.Popen:
    """Start `mlflow server` on the stack's database, in a session of its own, and record its group and URL."""
    stack.artifacts.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("mlflow")), "server"]
    command += ["--backend-store-uri", postgres.database_uri(stack, "mlflow")]
    command += ["--artifacts-destination", str(stack.artifacts)]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    # gunicorn, not MLflow's default uvicorn: on a kept-alive connection, as MLflow's client uses, each
    # uvicorn answer waited ~40 ms for the client's delayed ACK (52 ms a call against 7 ms; bench/README.md).
    command += ["--gunicorn-opts", "--threads 4 --log-level warning"]
    # No job runner: MLflow 3's server otherwise starts seven huey consumers for GenAI jobs that gdpipe
    # never queues, which keep about a core busy between them (a user's own setting wins).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} | os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if auth_env:
        command += ["--app-name", "basic-auth"]
        env |= auth_env
    with open(stack.mlflow_log, "ab") as log:
        # A session of its own: `stop` ends the server and its workers together, and Ctrl-C on make does not.
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    stack.mlflow_pid.write_text(f"{server.pid} http://{host}:{port}\n")
    return server


def wait_for(stack: Stack, server: subprocess.Popen, host: str, port: int, log_start: int) -> None:
    """Until the server answers, or says why it stopped (its log from `log_start` on is this start's)."""
    url = f"http://{host}:{port}/health"

    def answers() -> bool:
        if server.poll() is not None:
            said = tail(stack.mlflow_log, log_start)
            if "Connection in use" in said:  # gunicorn's words: another program took the port after our check
                raise InputError(f"cannot listen on {host}:{port} (taken since make server checked it): {OTHER_PORT}")
            raise InputError(f"the MLflow server stopped at start: {last_line(said)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
        return False

    if not wait_until(answers, START_TIMEOUT_S, 0.3):
        said = f"the MLflow server did not answer at {url} within {START_TIMEOUT_S} s: see {stack.mlflow_log}"
        raise InputError(said)


def auth_environment(stack: Stack) -> dict[str, str]:
    """What the basic-auth app reads: its users' database, its first admin, a key for its forms' tokens."""
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (username and password):
        raise InputError(
            "SERVER_AUTH=1 needs the admin's credentials: export MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (they are used only the first time; later the server checks them)"
        )
    # No secret in this file: the admin comes from the environment, once, and is stored as a hash.
    stack.auth_config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        # MLflow reads this file with configparser, where % starts an interpolation: %% is a %.
        f"database_uri = {postgres.database_uri(stack, 'mlflow_auth').replace('%', '%%')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # a password is hashed once a minute, not on every request
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(stack.auth_config),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


def stop(stack: Stack) -> bool:
    """Stop the MLflow server this stack started; False when none runs."""
    found = running(stack)
    stack.mlflow_pid.unlink(missing_ok=True)
    return found is not None and end_group(found[0])


def end_group(group: int) -> bool:
    """SIGTERM to a server's process group, SIGKILL if it still runs 10 s later; False: no such group."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not wait_until(lambda: _gone(group), 10, 0.1):
        os.killpg(group, signal.SIGKILL)
    return True


def _gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def running_servers() -> list[Path]:
    """The folders of the MLflow servers that `start` started on this machine, whatever their --dir."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            command = cmdline.read_bytes().split(b"\0")
            artifacts = Path(os.fsdecode(command[command.index(b"--artifacts-destination") + 1]))
            if running(Stack(artifacts.parent)):
                found.add(artifacts.parent.resolve())
    return sorted(found)
