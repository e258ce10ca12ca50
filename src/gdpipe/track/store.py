"""The MLflow store as its writers meet it: how they take turns, its failures in words, a half-built sqlite file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from gdpipe.core import store_uri
from gdpipe.core.command import InputError
from gdpipe.core.store_uri import redact
from gdpipe.core.wait import wait_until

# What a failing store raises through MLflow's API: MLflow's own errors, and for a sqlite store the
# database's (SQLAlchemy's) and the file system's.
STORE_ERRORS = (MlflowException, SQLAlchemyError, OSError)
RACE_TRIES = 3  # a call that lost an insert race finds the winner's row when made again; one more in reserve
T = TypeVar("T")
# How long a publisher waits for another process to let go of a sqlite store (a reader such as make ui,
# a program holding a transaction), by default; GDPIPE_STORE_WAIT sets it. Each of MLflow's own calls
# waits 20 s more at most (its busy_timeout) for a lock taken after this wait.
STORE_WAIT_S = 60


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite store (whose writers `store_lock` serialises); None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[bool]:
    """Serialise writers of one sqlite store: its first-time table creation and concurrent writes are not safe.

    Yields whether the lock is held, so that no other gdpipe publisher is writing to the store. A
    server store takes no lock (the server serialises each call; publishers take turns by claiming
    a result, publish._publish_once), so it yields False.
    """
    database = sqlite_file(uri)
    if database is None:
        yield False
        return
    folder = database.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".gdpipe.lock", "a")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise store_failure(err, uri) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_wait() -> float:
    """Seconds a publisher waits for other processes to let go of a sqlite store (GDPIPE_STORE_WAIT)."""
    setting = os.environ.get("GDPIPE_STORE_WAIT", str(STORE_WAIT_S))
    try:
        seconds = float(setting)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise InputError(f"GDPIPE_STORE_WAIT={setting!r}: must be seconds, 0 or more (default {STORE_WAIT_S})")
    return seconds


def wait_until_free(uri: str) -> None:
    """Wait until no other process holds the sqlite store, GDPIPE_STORE_WAIT seconds at most; else InputError.

    In sqlite's default (rollback journal) mode a reader blocks a writer: `make ui` reading a big run, or
    any program with a transaction open, would make MLflow's next write wait 20 s and fail with "database
    is locked" and nothing else. An exclusive lock taken and let go at once tells that nobody holds it;
    it is tried again every 0.1 s (a Python sleep, which Ctrl-C cuts short, unlike sqlite's own wait).
    Any other failure (no file yet, a damaged one) is left to MLflow's calls, which say it in words.
    """
    database = sqlite_file(uri)
    if database is None or not database.exists():
        return
    seconds = store_wait()
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=0, isolation_level=None)) as connection:
            free = wait_until(lambda: _free(connection), seconds, 0.1)
    except sqlite3.Error:
        return  # not a lock (no file yet, a damaged one): MLflow's next call says it in words
    if not free:
        locked = _locked(database, f"for {seconds:g} s (GDPIPE_STORE_WAIT)")
        raise InputError(f"MLflow tracking store {redact(uri)} {locked}")


def _free(connection: sqlite3.Connection) -> bool:
    """True when an exclusive lock can be taken (and is let go at once); False while another process holds one."""
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as err:
        if "locked" not in str(err):
            raise
        return False
    return True


def _locked(database: Path, how_long: str) -> str:
    """What holds a locked sqlite store and what to do, after "MLflow tracking store <uri> "."""
    return (
        f"is locked by another process: the sqlite file {database} stayed locked {how_long}, held by a reader "
        "such as make ui showing a big run, or a program with a transaction open on it; close it or wait for "
        "it, then run again (make repro)"
    )


def retried_if_raced(call: Callable[..., T], *args: object, **kwargs: object) -> T:
    """`call(*args, **kwargs)`, made again if it lost a race with another publisher to insert the same row.

    Some of MLflow's SQL-store writes look a row up and insert it when missing: an experiment's
    dataset (log_inputs) and tags, a model's alias (set_registered_model_alias). Two publishers at
    once can both insert it, and on PostgreSQL the later one fails on the unique key (BAD_REQUEST,
    "duplicate key value violates unique constraint "dataset_pk""), its transaction rolled back;
    made again, the call finds the winner's row. Nothing serialises these writes but the store:
    gdpipe's file lock is for sqlite files only.
    """
    for _ in range(RACE_TRIES - 1):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            message = str(err).lower()
            lost = "unique constraint" in message or "duplicate entry" in message  # PostgreSQL, sqlite; MySQL
            if err.error_code != "BAD_REQUEST" or not lost:
                raise
    return call(*args, **kwargs)


def first_line(err: BaseException, uri: str) -> str:
    """The first line of an error, fit to print: MLflow's messages repeat the URI, password included."""
    text = str(err).strip()
    line = (text.splitlines()[0] if text else type(err).__name__).replace(uri, redact(uri))
    password = store_uri.credentials(uri)[1]
    secrets = (
        password,
        password and unquote(password),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
        os.environ.get("MLFLOW_TRACKING_TOKEN"),
    )
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return line[:300]


def store_failure(err: BaseException, uri: str, doing: str = "") -> InputError:
    """The one line for a store that failed: which store (no secrets), what went wrong and what to do."""
    return InputError(f"MLflow tracking store {redact(uri)} {explain(err, uri)}{f' ({doing})' if doing else ''}")


def explain(err: BaseException, uri: str) -> str:
    """What went wrong with the store, and what to do, after "MLflow tracking store <uri> ": no secrets.

    MLflow wraps what failed (a refused connection, a full disk, a damaged file) in its own exception;
    the cause is found along the chain of causes.
    """
    causes = list(_chain(err))
    codes = {getattr(cause, "error_code", None) for cause in causes}
    numbers = {cause.errno for cause in causes if isinstance(cause, OSError)}
    text = " ".join(str(cause) for cause in causes).lower()
    where = sqlite_file(uri)
    if "UNAUTHENTICATED" in codes:
        credentials = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        user = store_uri.credentials(uri)[0] or os.environ.get("MLFLOW_TRACKING_USERNAME")
        if user or os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return f"refused the credentials (401 Unauthorized): check {credentials}"
        return f"asks for credentials (401 Unauthorized): export {credentials}"
    if "PERMISSION_DENIED" in codes:
        return "denied this user permission (403 Forbidden): ask its admin for EDIT permission on the experiment"
    if errno.ECONNREFUSED in numbers:
        return "refused the connection: is the server running (make server starts one)? Else check MLFLOW_TRACKING_URI"
    if errno.ENOSPC in numbers or "database or disk is full" in text:
        return "is on a full disk (no space left): free some space and run again; nothing of it was lost"
    if numbers & {errno.EACCES, errno.EPERM, errno.EROFS} or "readonly database" in text:
        folder = where.parent if where else "its folder"
        return f"cannot be written (permission denied or read-only): check the permissions of {folder}"
    if where is not None and ("malformed" in text or "not a database" in text):
        return (
            f"is damaged ({'malformed' if 'malformed' in text else 'not a database'}), and gdpipe never deletes a "
            f"store that may hold runs: move it aside (mv '{where}' '{where}.damaged'), then publish again "
            "(make repro) into a new one"
        )
    if where is not None and "database is locked" in text:  # taken after wait_until_free, held past MLflow's 20 s
        return _locked(where, "longer than MLflow waits (20 s)")
    if "timed out" in text or "connection aborted" in text or "remote end closed" in text or "max retries" in text:
        return f"did not answer: {first_line(causes[-1], uri)}; check that the server runs and MLFLOW_TRACKING_URI"
    return f"failed: {first_line(err, uri)}"


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__  # orig: SQLAlchemy's driver error


def half_built(database: Path) -> bool:
    """True for a sqlite store whose first setup was cut short (a kill, a full disk): MLflow cannot open it.

    A setup MLflow finished leaves at least two rows (its schema's version, then the Default experiment,
    made last), so a file with at most one row in all its tables holds no run or model and is safe to make
    anew. A store that cannot be read, or holds more, is not half-built: it is never deleted.
    """
    # sqlite's own catalog, not MLflow's tables: MLflow's API cannot open such a store, so no public way can
    # tell what it holds, and counting every table's rows needs no knowledge of MLflow's schema.
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows = 0
            for table in tables:
                quoted = table.replace('"', '""')
                rows += connection.execute(f'SELECT count(*) FROM "{quoted}"').fetchone()[0]
            return rows <= 1
    except sqlite3.Error:
        return False  # unreadable: it may hold runs


def remove_store(database: Path) -> None:
    """Delete a sqlite store's file and its journals (only one that is `half_built`)."""
    for path in (database, *(database.with_name(database.name + end) for end in ("-journal", "-wal", "-shm"))):
        path.unlink(missing_ok=True)
