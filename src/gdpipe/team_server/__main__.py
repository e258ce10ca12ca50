"""The commands of the team server: start the stack (PostgreSQL, then MLflow on it), or stop it.

    python -m gdpipe.team_server start --dir .server --port 5002 [--auth]   # make server
    python -m gdpipe.team_server stop --dir .server                         # make server-stop

A start that fails half-way stops what it started, and its line says so.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

from gdpipe.core.command import InputError, Terminated, run_command
from gdpipe.team_server import mlflow_server, postgres
from gdpipe.team_server.stack import Stack


def _start_stack(stack: Stack, host: str, port: int, auth: bool, workers: int) -> str:
    """Start PostgreSQL and MLflow, after what can be checked first; if a step fails, stop what it started."""
    postgres_ran = postgres.runs(stack)
    server = None
    try:
        mlflow_server.check_port(host, port)
        stack.folder.mkdir(parents=True, exist_ok=True)
        auth_env = mlflow_server.auth_environment(stack) if auth else {}
        postgres.start(stack)
        postgres.create_databases(stack)
        log_start = stack.mlflow_log.stat().st_size if stack.mlflow_log.exists() else 0
        server = mlflow_server.start(stack, host, port, auth_env, workers)
        mlflow_server.wait_for(stack, server, host, port, log_start)
    except OSError as err:  # a folder or file of the stack that cannot be made
        said = f"{err.filename or stack.folder}: {err.strerror}"
        raise InputError("; ".join([said, *_undo(stack, server, postgres_ran)])) from None
    except InputError as err:
        raise InputError("; ".join([str(err), *_undo(stack, server, postgres_ran)])) from None
    except (KeyboardInterrupt, Terminated) as err:
        for note in _undo(stack, server, postgres_ran):
            err.add_note(note)  # part of the line run_main prints
        raise
    return f"http://{host}:{port}"


def _undo(stack: Stack, server: subprocess.Popen | None, postgres_ran: bool) -> list[str]:
    """Stop the MLflow server and the PostgreSQL that a failed start started; what it did, in words."""
    stopped, said = [], []
    if server is not None:
        stack.mlflow_pid.unlink(missing_ok=True)
        if mlflow_server.end_group(server.pid):  # its workers too, should the server itself have died
            stopped.append("the MLflow server")
    if postgres_ran:
        said.append(f"PostgreSQL, which ran before, still runs ({_stop_command(stack)} stops it)")
    else:
        try:
            if postgres.stop(stack):
                stopped.append("PostgreSQL")
        except InputError as err:
            said.append(str(err))
    return [f"stopped {' and '.join(stopped)}, which it had started", *said] if stopped else said


def _stop_command(stack: Stack) -> str:
    """What stops this stack: with its SERVER_DIR, unless it is make's own (.server, here)."""
    if stack.folder == Path(".server").resolve():
        return "make server-stop"
    return f"make server-stop SERVER_DIR={shlex.quote(str(stack.folder))}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start PostgreSQL and the MLflow server (made the first time)")
    start.add_argument("--dir", type=Path, default=Path(".server"))
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=5002)
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--auth", action="store_true", help="MLflow's basic-auth app (admin: MLFLOW_TRACKING_*)")
    stop = commands.add_parser("stop", help="stop what start started")
    stop.add_argument("--dir", type=Path, default=Path(".server"))
    args = parser.parse_args(argv)
    stack = Stack(args.dir)

    if args.command == "stop":
        postgres_runs = postgres.runs(stack)  # first: a cluster that cannot be checked stops nothing
        stopped = ["MLflow"] if mlflow_server.stop(stack) else []
        if postgres_runs and postgres.stop(stack):
            stopped.append("PostgreSQL")
        print(f"stopped {' and '.join(stopped)} of {stack.folder}" if stopped else _nothing_runs(stack))
        return 0
    running = mlflow_server.running(stack)
    if running is None:
        url = _start_stack(stack, args.host, args.port, args.auth, args.workers)
        print(f"MLflow server on PostgreSQL at {url} (data in {stack.folder}; {_stop_command(stack)} stops it)")
    else:
        url = running[1]
        print(f"MLflow server of {stack.folder} already runs at {url} ({_stop_command(stack)} stops it)")
    print(f"export MLFLOW_TRACKING_URI={url}")
    return 0


def _nothing_runs(stack: Stack) -> str:
    """What server-stop says when it found no server in its folder: where it looked, and where servers run."""
    found = [
        f"a server runs in {other.folder}: {_stop_command(other)}"
        for other in map(Stack, mlflow_server.running_servers())
    ]
    if not found:
        found = ["a server started with another SERVER_DIR stops with make server-stop SERVER_DIR=<that folder>"]
    return "; ".join([f"nothing runs in {stack.folder}", *found])


if __name__ == "__main__":
    run_command(main)
