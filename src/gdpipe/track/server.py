"""A team's tracking stack on this machine: PostgreSQL, and an MLflow server on it that proxies the artifacts.

    python -m gdpipe.track.server start --dir .server --port 5002 [--auth]   # make server
    python -m gdpipe.track.server stop --dir .server                         # make server-stop

Everything lives in one folder (`--dir`): the database cluster (postgres/), the artifacts (artifacts/)
and both servers' logs. Starting again reuses it. PostgreSQL listens on a socket in its own folder
only, never on the network, so it needs no password; MLflow listens on 127.0.0.1. With `--auth`,
MLflow's basic-auth app guards the server: its admin is MLFLOW_TRACKING_USERNAME with
MLFLOW_TRACKING_PASSWORD (given to MLflow in its environment, stored only as MLflow's hash).
docs/team-server.md says how a team runs the same on its own host.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from gdpipe.core.command import InputError, Terminated, run_command
from gdpipe.core.wait import wait_until

DB_PORT = 5432  # only a socket's name (.s.PGSQL.5432) in the cluster's own folder: no clash with other clusters
DB_USER = "postgres"  # the cluster's superuser, and the Unix user that runs it when we are root
DATABASES = ("mlflow", "mlflow_auth")  # runs and models; basic auth's users
SOCKET_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path)
START_TIMEOUT_S = 90


class Stack:
    """The folders and files of one stack."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.cluster = self.folder / "postgres"
        self.artifacts = self.folder / "artifacts"
        self.mlflow_log = self.folder / "mlflow.log"
        self.mlflow_pid = self.folder / "mlflow.pid"
        self.auth_config = self.folder / "basic_auth.ini"

    def database_uri(self, name: str) -> str:
        """How MLflow reaches a database: through the cluster's socket, as its superuser (local trust).

        ASCII whatever the folder's name: a space, a % or a non-ASCII letter is percent-encoded.
        """
        return f"postgresql+psycopg2://{DB_USER}@/{name}?host={quote(str(self.cluster), safe='/')}&port={DB_PORT}"


# --- PostgreSQL ------------------------------------------------------------------------------


def _postgres_program(name: str) -> str:
    """initdb or pg_ctl: on PATH, else the newest of Debian's and Ubuntu's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None, key=_version)
    if found is None:
        raise InputError(
            f"PostgreSQL's {name} is not installed: apt-get install postgresql (Debian, Ubuntu), "
            "or put the folder of initdb and pg_ctl on PATH"
        )
    return found


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in Path(path).parts[-3].split(".") if part.isdigit())


def _db_account() -> pwd.struct_passwd | None:
    """The Unix user that runs PostgreSQL when we are root (it refuses to run as root); None: ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(DB_USER)
    except KeyError:
        raise InputError(
            f"PostgreSQL refuses to run as root, and there is no user {DB_USER!r} to run it: "
            f"useradd --system {DB_USER}, or run make server as an ordinary user"
        ) from None


def _as_db_user(command: list[str]) -> subprocess.CompletedProcess:
    account = _db_account()
    extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    return subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        **extra,
    )


def _make_cluster(stack: Stack) -> None:
    """A new cluster in stack.cluster, owned by the user that runs it, listening on its socket only."""
    account = _db_account()
    stack.cluster.mkdir(mode=0o700, parents=True, exist_ok=True)
    if account:
        os.chown(stack.cluster, account.pw_uid, account.pw_gid)
    _check_reachable(stack)
    initdb = [_postgres_program("initdb"), "-D", str(stack.cluster), "-U", DB_USER, "--auth=trust", "-E", "UTF8"]
    made = _as_db_user([*initdb, "--locale=C.UTF-8", "--no-instructions"])
    if made.returncode != 0:
        shutil.rmtree(stack.cluster, ignore_errors=True)  # nothing in it yet: the next start tries afresh
        raise InputError(f"initdb failed for {stack.cluster}: {_last_line(made.stdout)}")
    with open(stack.cluster / "postgresql.conf", "a") as conf:
        conf.write("include_if_exists = 'gdpipe.conf'  # written by gdpipe at every start\n")


def _check_reachable(stack: Stack) -> None:
    """As root, the user postgres must be able to write the cluster's folder, wherever SERVER_DIR put it."""
    if _db_account() and _as_db_user(["test", "-w", str(stack.cluster)]).returncode != 0:
        raise InputError(
            f"PostgreSQL runs as the user {DB_USER}, which cannot reach {stack.cluster} (a folder above it "
            "is closed to other users): chmod o+x the folders above it, or make server SERVER_DIR=<a folder "
            f"{DB_USER} can reach>"
        )


def _postgres_runs(stack: Stack) -> bool:
    if not (stack.cluster / "PG_VERSION").exists():
        return False
    status = _as_db_user([_postgres_program("pg_ctl"), "status", "-D", str(stack.cluster)])
    if status.returncode == 4:  # pg_ctl cannot read the cluster's folder (0: it runs, 3: it does not)
        _check_reachable(stack)  # the usual cause, in words
        raise InputError(f"pg_ctl cannot read {stack.cluster}: {_last_line(status.stdout)}")
    return status.returncode == 0


def _start_postgres(stack: Stack) -> None:
    """Start the cluster (made the first time) unless it runs; its socket follows the folder if it moved."""
    if not (stack.cluster / "PG_VERSION").exists():
        _make_cluster(stack)
    socket_path = os.fsencode(stack.cluster / f".s.PGSQL.{DB_PORT}")
    if len(socket_path) > SOCKET_PATH_MAX:
        raise InputError(
            f"{stack.folder}: too deep for PostgreSQL's socket ({len(socket_path)} bytes, at most "
            f"{SOCKET_PATH_MAX}): make server SERVER_DIR=<a shorter path>"
        )
    if _postgres_runs(stack):
        return
    # A list of folders, where a folder with a space or a comma needs double quotes ("" for a quote).
    socket_folder = '"' + str(stack.cluster).replace('"', '""') + '"'
    settings = {"listen_addresses": "", "unix_socket_directories": socket_folder, "port": str(DB_PORT)}
    conf = stack.cluster / "gdpipe.conf"
    conf.write_text("".join(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in settings.items()))
    account = _db_account()
    if account:
        os.chown(conf, account.pw_uid, account.pw_gid)
    log = stack.cluster / "postgres.log"
    pg_ctl = _postgres_program("pg_ctl")
    started = _as_db_user([pg_ctl, "start", "-D", str(stack.cluster), "-l", str(log), "-w", "-t", "60"])
    if started.returncode != 0:
        raise InputError(f"PostgreSQL did not start in {stack.cluster}: {_last_line(_tail(log) or started.stdout)}")


def _create_databases(stack: Stack) -> None:
    import psycopg2  # the server extra's driver; only `start` needs it

    try:
        connection = psycopg2.connect(host=str(stack.cluster), port=DB_PORT, user=DB_USER, dbname="postgres")
    except psycopg2.Error as err:
        raise InputError(f"PostgreSQL in {stack.cluster} does not answer: {_last_line(str(err))}") from None
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.Error as err:
        raise InputError(f"PostgreSQL in {stack.cluster} made no databases: {_last_line(str(err))}") from None
    finally:
        connection.close()


def _stop_postgres(stack: Stack) -> bool:
    if not _postgres_runs(stack):
        return False
    pg_ctl = _postgres_program("pg_ctl")
    stopped = _as_db_user([pg_ctl, "stop", "-D", str(stack.cluster), "-m", "fast", "-w", "-t", "60"])
    if stopped.returncode != 0:
        raise InputError(f"PostgreSQL in {stack.cluster} did not stop: {_last_line(stopped.stdout)}")
    return True


# --- MLflow ----------------------------------------------------------------------------------


def _running_mlflow(stack: Stack) -> tuple[int, str] | None:
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


def _check_port(host: str, port: int) -> None:
    """Before anything starts: else the health check could be answered by whoever has the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InputError(f"cannot listen on {host}:{port} ({err.strerror}): {_OTHER_PORT}") from None


_OTHER_PORT = "make server SERVER_PORT=<another port>"


def _start_mlflow(stack: Stack, host: str, port: int, auth_env: dict[str, str], workers: int) -> subprocess.Popen:
    stack.artifacts.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("mlflow")), "server"]
    command += ["--backend-store-uri", stack.database_uri("mlflow"), "--artifacts-destination", str(stack.artifacts)]
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


def _wait_for_mlflow(stack: Stack, server: subprocess.Popen, host: str, port: int, log_start: int) -> None:
    """Until the server answers, or says why it stopped (its log from `log_start` on is this start's)."""
    url = f"http://{host}:{port}/health"

    def answers() -> bool:
        if server.poll() is not None:
            said = _tail(stack.mlflow_log, log_start)
            if "Connection in use" in said:  # gunicorn's words: another program took the port after our check
                raise InputError(f"cannot listen on {host}:{port} (taken since make server checked it): {_OTHER_PORT}")
            raise InputError(f"the MLflow server stopped at start: {_last_line(said)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
        return False

    if not wait_until(answers, START_TIMEOUT_S, 0.3):
        said = f"the MLflow server did not answer at {url} within {START_TIMEOUT_S} s: see {stack.mlflow_log}"
        raise InputError(said)


def _auth_environment(stack: Stack) -> dict[str, str]:
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
        f"database_uri = {stack.database_uri('mlflow_auth').replace('%', '%%')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # a password is hashed once a minute, not on every request
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(stack.auth_config),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


def _stop_mlflow(stack: Stack) -> bool:
    running = _running_mlflow(stack)
    stack.mlflow_pid.unlink(missing_ok=True)
    return running is not None and _end_group(running[0])


def _end_group(group: int) -> bool:
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


def _running_servers() -> list[Path]:
    """The folders of the MLflow servers that `start` started on this machine, whatever their --dir."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            command = cmdline.read_bytes().split(b"\0")
            artifacts = Path(os.fsdecode(command[command.index(b"--artifacts-destination") + 1]))
            if _running_mlflow(Stack(artifacts.parent)):
                found.add(artifacts.parent.resolve())
    return sorted(found)


# --- helpers ---------------------------------------------------------------------------------


def _tail(path: Path, start: int = 0) -> str:
    """The end of a log, from byte `start` on."""
    try:
        return path.read_bytes()[start:].decode(errors="replace")[-4000:]
    except FileNotFoundError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def _start_stack(stack: Stack, host: str, port: int, auth: bool, workers: int) -> str:
    """Start PostgreSQL and MLflow, after what can be checked first; if a step fails, stop what it started."""
    postgres_ran = _postgres_runs(stack)
    server = None
    try:
        _check_port(host, port)
        stack.folder.mkdir(parents=True, exist_ok=True)
        auth_env = _auth_environment(stack) if auth else {}
        _start_postgres(stack)
        _create_databases(stack)
        log_start = stack.mlflow_log.stat().st_size if stack.mlflow_log.exists() else 0
        server = _start_mlflow(stack, host, port, auth_env, workers)
        _wait_for_mlflow(stack, server, host, port, log_start)
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
        if _end_group(server.pid):  # its workers too, should the server itself have died
            stopped.append("the MLflow server")
    if postgres_ran:
        said.append(f"PostgreSQL, which ran before, still runs ({_stop_command(stack)} stops it)")
    else:
        try:
            if _stop_postgres(stack):
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
        postgres_runs = _postgres_runs(stack)  # first: a cluster that cannot be checked stops nothing
        stopped = ["MLflow"] if _stop_mlflow(stack) else []
        if postgres_runs and _stop_postgres(stack):
            stopped.append("PostgreSQL")
        print(f"stopped {' and '.join(stopped)} of {stack.folder}" if stopped else _nothing_runs(stack))
        return 0
    running = _running_mlflow(stack)
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
    found = [f"a server runs in {other.folder}: {_stop_command(other)}" for other in map(Stack, _running_servers())]
    if not found:
        found = ["a server started with another SERVER_DIR stops with make server-stop SERVER_DIR=<that folder>"]
    return "; ".join([f"nothing runs in {stack.folder}", *found])


if __name__ == "__main__":
    run_command(main)
