"""The PostgreSQL cluster of a stack: made the first time, started, its databases created, stopped. The
operating system's PostgreSQL (initdb, pg_ctl), on a Unix socket in the cluster's folder only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from gdpipe.core.command import InputError
from gdpipe.team_server.stack import Stack, last_line, tail

DB_PORT = 5432  # only a socket's name (.s.PGSQL.5432) in the cluster's own folder: no clash with other clusters
DB_USER = "postgres"  # the cluster's superuser, and the Unix user that runs it when we are root
DATABASES = ("mlflow", "mlflow_auth")  # runs and models; basic auth's users
SOCKET_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path)


def database_uri(stack: Stack, name: str) -> str:
    """How MLflow reaches a database: through the cluster's socket, as its superuser (local trust).

    ASCII whatever the folder's name: a space, a % or a non-ASCII letter is percent-encoded.
    """
    return f"postgresql+psycopg2://{DB_USER}@/{name}?host={quote(str(stack.cluster), safe='/')}&port={DB_PORT}"


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
        raise InputError(f"initdb failed for {stack.cluster}: {last_line(made.stdout)}")
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


def runs(stack: Stack) -> bool:
    """Whether the stack's cluster runs (pg_ctl status)."""
    if not (stack.cluster / "PG_VERSION").exists():
        return False
    status = _as_db_user([_postgres_program("pg_ctl"), "status", "-D", str(stack.cluster)])
    if status.returncode == 4:  # pg_ctl cannot read the cluster's folder (0: it runs, 3: it does not)
        _check_reachable(stack)  # the usual cause, in words
        raise InputError(f"pg_ctl cannot read {stack.cluster}: {last_line(status.stdout)}")
    return status.returncode == 0


def start(stack: Stack) -> None:
    """Start the cluster (made the first time) unless it runs; its socket follows the folder if it moved."""
    if not (stack.cluster / "PG_VERSION").exists():
        _make_cluster(stack)
    socket_path = os.fsencode(stack.cluster / f".s.PGSQL.{DB_PORT}")
    if len(socket_path) > SOCKET_PATH_MAX:
        raise InputError(
            f"{stack.folder}: too deep for PostgreSQL's socket ({len(socket_path)} bytes, at most "
            f"{SOCKET_PATH_MAX}): make server SERVER_DIR=<a shorter path>"
        )
    if runs(stack):
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
        raise InputError(f"PostgreSQL did not start in {stack.cluster}: {last_line(tail(log) or started.stdout)}")


def create_databases(stack: Stack) -> None:
    """The databases MLflow uses, made in the cluster the first time."""
    import psycopg2  # the server extra's driver; only `start` needs it

    try:
        connection = psycopg2.connect(host=str(stack.cluster), port=DB_PORT, user=DB_USER, dbname="postgres")
    except psycopg2.Error as err:
        raise InputError(f"PostgreSQL in {stack.cluster} does not answer: {last_line(str(err))}") from None
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.Error as err:
        raise InputError(f"PostgreSQL in {stack.cluster} made no databases: {last_line(str(err))}") from None
    finally:
        connection.close()


def stop(stack: Stack) -> bool:
    """Stop the cluster (fast: open sessions are ended); False when it did not run."""
    if not runs(stack):
        return False
    pg_ctl = _postgres_program("pg_ctl")
    stopped = _as_db_user([pg_ctl, "stop", "-D", str(stack.cluster), "-m", "fast", "-w", "-t", "60"])
    if stopped.returncode != 0:
        raise InputError(f"PostgreSQL in {stack.cluster} did not stop: {last_line(stopped.stdout)}")
    return True
