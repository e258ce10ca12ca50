"""The store as its writers share it: the writers of a sqlite file take turns and wait for its readers, a
half-built sqlite file is made anew, the experiment is found or made, and a write that lost an insert race
to another writer is made again."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gdpipe.core.command import InputError
from gdpipe.core.store_uri import sqlite_file
from gdpipe.core.wait import wait_until
from gdpipe.track.failures import STORE_ERRORS, locked, store_error, store_failure

RACE_TRIES = 3  # a call that lost an insert race finds the winner's row when made again; one more in reserve
T = TypeVar("T")
# How long a publisher waits for another process to let go of a sqlite store (a reader such as make ui,
# a program holding a transaction), by default; GDPIPE_STORE_WAIT sets it. Each of MLflow's own calls
# waits 20 s more at most (its busy_timeout) for a lock taken after this wait.
STORE_WAIT_S = 60
# The experiment's kind for MLflow 3: model training, not GenAI. (The UI of MLflow 3.17 picks its view
# from its own GenAI / Model training switch, or ?workflowType=machine_learning, not from this tag.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[bool]:
    """Serialise writers of one sqlite store: its first-time table creation and concurrent writes are not safe.

    Yields whether the lock is held, so that no other gdpipe publisher is writing to the store. A
    server store takes no lock (the server serialises each call; publishers take turns by claiming
    a result, claim.publish_once), so it yields False.
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
        raise store_error(uri, locked(database, f"for {seconds:g} s (GDPIPE_STORE_WAIT)"))


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


def open_experiment(name: str, uri: str) -> tuple[MlflowClient, str]:
    """A client of the store and the experiment's id, created on first use with its artifacts inside the store.

    Called under `store_lock`: making the client makes a sqlite store's tables the first time, and
    two processes doing that at once break it ("duplicate column name"). A sqlite store half-built
    by an interrupted first setup (a kill, a full disk), which MLflow cannot open, is made anew.
    """
    database = sqlite_file(uri)
    try:
        if database is not None and database.exists() and half_built(database):
            remove_store(database)
        return _find_or_make(name, uri)
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None


def _find_or_make(name: str, uri: str) -> tuple[MlflowClient, str]:
    """Publishers of a server may all create the experiment at once: those that lose the race use the winner's."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        database = sqlite_file(uri)
        location = (database.parent / "artifacts").as_uri() if database else None
        try:
            return client, client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            retried_if_raced(client.set_experiment_tag, found.experiment_id, key, value)
    return client, found.experiment_id


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
