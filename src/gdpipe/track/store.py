"""Where the MLflow store is, how its writers take turns, and how to name it without its secrets."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a team's server), else the embedded sqlite store in `root`/mlruns."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def repo_root() -> Path:
    """The real repository: DVC_ROOT under DVC (which names the main repo also for queued runs), else here."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def redact(uri: str) -> str:
    """The URI without a password or token, fit to print or record."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite store (whose writers `store_lock` serialises); None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of one sqlite store: its first-time table creation and concurrent writes are not safe.

    A server store needs no lock (the server serialises), so nothing is locked for it.
    """
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    folder = database.parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".gdpipe.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def first_line(err: BaseException, uri: str) -> str:
    """The first line of an error, fit to print: MLflow's messages repeat the URI, password included."""
    text = str(err).strip()
    line = (text.splitlines()[0] if text else type(err).__name__).replace(uri, redact(uri))
    password = urlsplit(uri).password
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
