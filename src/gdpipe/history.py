"""The training record shared by both variants: one row per recorded epoch, as in the lesson's tables."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdpipe.errors import InputError
from gdpipe.files import atomic_write, file_sha256, read_json, write_json

HEADER = ("epoch", "w", "loss")


@dataclass(frozen=True)
class History:
    """Row k: epoch k (1-based), w after the k-th update, loss of the k-th forward pass (before that update).

    `diverged_at` is the first epoch whose w or loss was not finite; the rows stop before it.
    """

    epoch: np.ndarray  # int64
    w: np.ndarray  # float64 (holding the float32 values both variants train in)
    loss: np.ndarray  # float64
    diverged_at: int | None = None

    @classmethod
    def from_trajectory(cls, w: np.ndarray, loss: np.ndarray, log_every: int) -> History:
        """Keep every `log_every`-th epoch (1, 1+k, 1+2k, ... like the lesson's prints) and the last finite one."""
        finite = np.isfinite(w) & np.isfinite(loss)
        bad = np.flatnonzero(~finite)
        diverged_at = int(bad[0]) + 1 if bad.size else None
        last = (diverged_at - 1) if diverged_at else w.size
        keep = np.arange(0, last, log_every)
        if last and keep[-1] != last - 1:
            keep = np.append(keep, last - 1)
        return cls(epoch=keep + 1, w=w[keep].astype(np.float64), loss=loss[keep].astype(np.float64), diverged_at=diverged_at)

    def write_csv(self, path: str | Path) -> None:
        """Write `epoch,w,loss` atomically; w in float32's shortest exact form, loss in float64's."""
        with atomic_write(path) as handle:
            handle.write(",".join(HEADER) + "\n")
            for epoch, w, loss in zip(self.epoch.tolist(), self.w.astype(np.float32), self.loss.tolist(), strict=True):
                handle.write(f"{epoch},{np.format_float_positional(w, unique=True, trim='0')},{loss!r}\n")

    @classmethod
    def read_csv(cls, path: str | Path) -> History:
        """Read a history written by `write_csv`; InputError naming the file and line if a row is bad."""
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (run the train stage: dvc repro)") from None
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise InputError(f"{path}: cannot read as CSV ({err})") from None
        if not rows or tuple(rows[0][:3]) != HEADER:
            raise InputError(f"{path}: the first line must be the header {','.join(HEADER)}")
        epochs, ws, losses = [], [], []
        for line_number, row in enumerate(rows[1:], start=2):
            try:
                epoch, w, loss = int(row[0]), float(row[1]), float(row[2])
            except (ValueError, IndexError):
                raise InputError(f"{path}: line {line_number}: expected epoch,w,loss as numbers, got {','.join(row)!r}") from None
            if not (math.isfinite(w) and math.isfinite(loss)) or epoch < 1 or (epochs and epoch <= epochs[-1]):
                raise InputError(f"{path}: line {line_number}: epochs must increase from 1 and w, loss be finite, got {','.join(row)!r}")
            epochs.append(epoch)
            ws.append(w)
            losses.append(loss)
        # w is written in float32's shortest form: read it back as that float32 value.
        return cls(epoch=np.array(epochs, dtype=np.int64), w=np.array(ws, dtype=np.float32).astype(np.float64), loss=np.array(losses))


def timing_path(history_path: str | Path) -> Path:
    """Where train keeps when it ran: beside the history, ignored by git and not hashed by DVC."""
    return Path(history_path).with_suffix(".timing.json")


def write_timing(history_path: str | Path, started_ms: int, finished_ms: int) -> None:
    """Record when the training behind `history_path` ran, tied to that history's content."""
    write_json(timing_path(history_path), {"started_ms": started_ms, "finished_ms": finished_ms, "history_sha256": file_sha256(history_path)})


def read_timing(history_path: str | Path) -> tuple[int, int] | None:
    """(started_ms, finished_ms) of the training that wrote this very history, or None if unknown.

    None when the file is missing or belongs to another history (DVC restored the history from its
    cache, or another run trained since): a time that is not known is not made up.
    """
    try:
        timing = read_json(timing_path(history_path))
        if timing["history_sha256"] == file_sha256(history_path):
            return int(timing["started_ms"]), int(timing["finished_ms"])
    except (InputError, KeyError, TypeError, ValueError):
        pass
    return None
