"""The stack's folder: where PostgreSQL and the MLflow server keep their files, and the last words of their logs."""

from __future__ import annotations

from pathlib import Path


class Stack:
    """The folders and files of one stack."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.cluster = self.folder / "postgres"
        self.artifacts = self.folder / "artifacts"
        self.mlflow_log = self.folder / "mlflow.log"
        self.mlflow_pid = self.folder / "mlflow.pid"
        self.auth_config = self.folder / "basic_auth.ini"


def tail(path: Path, start: int = 0) -> str:
    """The end of a log, from byte `start` on."""
    try:
        return path.read_bytes()[start:].decode(errors="replace")[-4000:]
    except FileNotFoundError:
        return ""


def last_line(text: str) -> str:
    """A log's last line that is not blank, cut to 300 characters, fit for a message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"
