"""The MLflow store's failures in words: one line saying which store (never its secrets), what went wrong
and what to do, from whatever MLflow, SQLAlchemy or the file system raised."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from gdpipe.core import store_uri
from gdpipe.core.command import InputError
from gdpipe.core.store_uri import redact, sqlite_file

# What a failing store raises through MLflow's API: MLflow's own errors, and for a sqlite store the
# database's (SQLAlchemy's) and the file system's.
STORE_ERRORS = (MlflowException, SQLAlchemyError, OSError)


def store_error(uri: str, what: str) -> InputError:
    """The line "MLflow tracking store <uri> <what>", the URI without its secrets."""
    return InputError(f"MLflow tracking store {redact(uri)} {what}")


def store_failure(err: BaseException, uri: str, doing: str = "") -> InputError:
    """The one line for a store that failed: which store, what went wrong and what to do; then what gdpipe
    was doing, and the notes the cleanup added to `err` (such as "numpy run <id> marked FAILED")."""
    context = "; ".join(filter(None, [doing, *getattr(err, "__notes__", ())]))
    return store_error(uri, f"{explain(err, uri)}{f' ({context})' if context else ''}")


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
    if where is not None and "database is locked" in text:  # taken after store.wait_until_free, past MLflow's 20 s
        return locked(where, "longer than MLflow waits (20 s)")
    if "timed out" in text or "connection aborted" in text or "remote end closed" in text or "max retries" in text:
        return f"did not answer: {first_line(causes[-1], uri)}; check that the server runs and MLFLOW_TRACKING_URI"
    return f"failed: {first_line(err, uri)}"


def locked(database: Path, how_long: str) -> str:
    """What holds a locked sqlite store and what to do, after "MLflow tracking store <uri> "."""
    return (
        f"is locked by another process: the sqlite file {database} stayed locked {how_long}, held by a reader "
        "such as make ui showing a big run, or a program with a transaction open on it; close it or wait for "
        "it, then run again (make repro)"
    )


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__  # orig: SQLAlchemy's driver error
