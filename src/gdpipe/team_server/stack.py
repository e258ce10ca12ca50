"""The stack's folder: where PostgreSQL and the MLflow server keep their files, and the last words of their logs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

DB_PORT = 5432  # only a socket's name (.s.PGSQL.5432) in the cluster's own folder: no clash with other clusters
DB_USER = "postgres"  # the cluster's superuser, and the Unix user that runs it when we are root


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


def tail(path: Path, start: int = 0) -> str:
    """The end of a log, from byte `start` on."""
    try:
        return path.read_bytes()[start:].decode(errors="replace")[-4000:]
    except FileNotFoundError:
        return ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"
