"""The files the stages hand each other, as types with their formats: every reader checks what it
reads and names the file in one line when it is wrong.

    data/dataset.npy        Dataset        written by generate, read by train, evaluate and track
    history/<variant>.csv   History        written by train: epoch, w, loss per recorded epoch
    models/<variant>.json   TrainedModel   written by train: the final w, and the params it was trained with
"""

from __future__ import annotations

import csv
import math
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gdpipe.core import memory
from gdpipe.core.command import InputError
from gdpipe.core.config import VARIANTS
from gdpipe.core.files import atomic_write, file_sha256, read_json, require_finite, write_json

# Large arrays are checked in chunks, so that no full-size temporary doubles the memory.
_CHUNK = 1 << 20


# --- data/dataset.npy -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Inputs x and targets y, equal-length float32 vectors."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        assert self.x.dtype == self.y.dtype == np.float32 and self.x.shape == self.y.shape and self.x.ndim == 1

    def save(self, path: str | Path) -> None:
        """Write x and y as rows of one (2, n) little-endian float32 .npy, atomically.

        Every byte is decided here (`npy_header`, then the numbers), not by the interpreter or NumPy's
        writer, so equal data gives an equal file under any Python and NumPy; `np.load` reads it.
        """
        with atomic_write(path, "wb") as handle:
            handle.write(npy_header(self.x.size))
            for row in (self.x, self.y):
                handle.write(row.astype("<f4", copy=False).data)

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """A data set written by `save`, memory-mapped: nothing is read until used, and then only the pages used
        (`part`). InputError naming the file if it is missing or not two rows of float32; the numbers are checked
        by `part`."""
        path = Path(path)
        try:
            # Copy-on-write: torch takes the rows as they are (a read-only array it would warn about); nothing writes.
            rows = np.lib.format.open_memmap(path, mode="c")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (run the generate stage: dvc repro)") from None
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"{path}: not a readable data set of float32 rows x and y ({err})") from None
        _check_rows(path, rows)
        x, y = rows
        return cls(x=x, y=y)

    def part(self, path: str | Path, start: int, stop: int) -> Dataset:
        """Points [start, stop), checked finite (InputError naming `path`, the file they come from, if not)."""
        x, y = self.x[start:stop], self.y[start:stop]
        if not (_all_finite(x) and _all_finite(y)):
            raise InputError(
                f"{path}: x and y must be finite, found NaN or infinity (rerun the generate stage: dvc repro)"
            )
        return Dataset(x=x, y=y)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a data set written by `save`; InputError naming the file if it is missing or corrupt."""
        path = Path(path)
        try:
            with path.open("rb") as handle:  # the .npy format only: np.load would also open zips and pickles
                rows = np.lib.format.read_array(handle, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (run the generate stage: dvc repro)") from None
        except MemoryError:
            samples = path.stat().st_size // memory.DATA_BYTES_PER_SAMPLE
            raise InputError(f"{path}: not enough memory to load it: {memory.describe(samples)}") from None
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"{path}: not a readable data set of float32 rows x and y ({err})") from None
        _check_rows(path, rows)
        data = cls(x=rows[0], y=rows[1]).part(path, 0, rows.shape[1])
        if not np.any(data.x):
            raise InputError(f"{path}: every x is 0, so w cannot be fitted (rerun the generate stage: dvc repro)")
        return data


def _check_rows(path: Path, rows: np.ndarray) -> None:
    two_rows = rows.ndim == 2 and rows.shape[0] == 2 and rows.size and rows.flags.c_contiguous
    if rows.dtype != np.float32 or not two_rows:
        raise InputError(
            f"{path}: expected a non-empty float32 array of 2 rows (x and y) in C order, got {rows.dtype}{rows.shape}"
        )


def npy_header(n: int) -> bytes:
    """The .npy (format 1.0) header of a (2, n) little-endian float32 array in C order, as NumPy writes it:
    magic, version, the header's length, then its dict padded with spaces to a multiple of 64 bytes."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': (2, {n}), }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("ascii")


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or infinity in `a`, checked chunk by chunk (no full-size temporary)."""
    return all(np.isfinite(a[start : start + _CHUNK]).all() for start in range(0, a.size, _CHUNK))


# --- history/<variant>.csv -------------------------------------------------------------------

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
        return cls(
            epoch=keep + 1, w=w[keep].astype(np.float64), loss=loss[keep].astype(np.float64), diverged_at=diverged_at
        )

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
                raise InputError(
                    f"{path}: line {line_number}: expected epoch,w,loss as numbers, got {','.join(row)!r}"
                ) from None
            if not (math.isfinite(w) and math.isfinite(loss)) or epoch < 1 or (epochs and epoch <= epochs[-1]):
                raise InputError(
                    f"{path}: line {line_number}: epochs must increase from 1 and w, loss be finite, "
                    f"got {','.join(row)!r}"
                )
            epochs.append(epoch)
            ws.append(w)
            losses.append(loss)
        # w is written in float32's shortest form: read it back as that float32 value.
        return cls(
            epoch=np.array(epochs, dtype=np.int64),
            w=np.array(ws, dtype=np.float32).astype(np.float64),
            loss=np.array(losses),
        )


def timing_path(history_path: str | Path) -> Path:
    """Where train keeps when it ran: beside the history, ignored by git and not hashed by DVC."""
    return Path(history_path).with_suffix(".timing.json")


def write_timing(history_path: str | Path, started_ms: int, finished_ms: int, world_size: int = 1) -> None:
    """Record when the training behind `history_path` ran, and on how many processes, tied to that history's content."""
    write_json(
        timing_path(history_path),
        {
            "started_ms": started_ms,
            "finished_ms": finished_ms,
            "world_size": world_size,
            "history_sha256": file_sha256(history_path),
        },
    )


def read_timing(history_path: str | Path) -> tuple[int, int] | None:
    """(started_ms, finished_ms) of the training that wrote this very history, or None if unknown.

    None when the file is missing or belongs to another history (DVC restored the history from its
    cache, or another run trained since): a time that is not known is not made up.
    """
    timing = _timing_of(history_path)
    try:
        return (int(timing["started_ms"]), int(timing["finished_ms"])) if timing else None
    except (KeyError, TypeError, ValueError):
        return None


def read_world_size(history_path: str | Path) -> int | None:
    """How many processes trained this very history, or None if unknown (as for `read_timing`)."""
    timing = _timing_of(history_path)
    size = timing.get("world_size") if timing else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


def _timing_of(history_path: str | Path) -> dict | None:
    try:
        timing = read_json(timing_path(history_path))
        if isinstance(timing, dict) and timing.get("history_sha256") == file_sha256(history_path):
            return timing
    except InputError:
        pass
    return None


# --- models/<variant>.json --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """The final w of one variant; `w` is None when training diverged before its first finite update.

    `trained_with` holds the params the training used ({"train.lr": 0.01, ...}), inside the file DVC
    caches: DVC records in dvc.lock the params it reads after the stage exits, which an edit at that
    moment makes other ones, and every later restore from DVC's cache would bring this model back
    under them. The track stage compares the two before it publishes.
    """

    variant: str
    w: float | None
    epochs_trained: int  # last epoch with a finite w and loss
    diverged_at_epoch: int | None
    trained_with: dict[str, object]

    @classmethod
    def from_history(cls, variant: str, history: History, trained_with: dict[str, object]) -> TrainedModel:
        """The model at the last recorded (always the last finite) epoch, trained with the params `trained_with`."""
        trained = bool(history.epoch.size)
        return cls(
            variant=variant,
            w=float(history.w[-1]) if trained else None,
            epochs_trained=int(history.epoch[-1]) if trained else 0,
            diverged_at_epoch=history.diverged_at,
            trained_with=dict(trained_with),
        )

    @property
    def diverged(self) -> bool:
        return self.diverged_at_epoch is not None

    def save(self, path: str | Path) -> None:
        """Write the record atomically as JSON."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path, variant: str | None = None) -> TrainedModel:
        """Read a record written by `save` (of `variant`, if given); InputError naming the file if it is malformed."""
        path = Path(path)
        record = read_json(path)
        if not isinstance(record, dict) or set(record) != set(cls.__dataclass_fields__):
            raise InputError(f"{path}: expected a JSON object with the keys {', '.join(cls.__dataclass_fields__)}")
        if record["variant"] not in VARIANTS:
            raise InputError(f"{path}: variant must be one of {', '.join(VARIANTS)}, got {record['variant']!r}")
        if variant is not None and record["variant"] != variant:
            raise InputError(f"{path}: holds the {record['variant']} model, expected the {variant} one")
        w = None if record["w"] is None else require_finite(path, "w", record["w"])
        for key in ("epochs_trained", "diverged_at_epoch"):
            value = record[key]
            if value is None and key == "diverged_at_epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{path}: {key} must be a whole number >= 0, got {value!r}")
        trained_with = record["trained_with"]
        if not isinstance(trained_with, dict) or not all(
            isinstance(value, str | int | float) for value in trained_with.values()
        ):
            raise InputError(f"{path}: trained_with must map each param to its value, got {trained_with!r:.80}")
        return cls(
            variant=record["variant"],
            w=w,
            epochs_trained=record["epochs_trained"],
            diverged_at_epoch=record["diverged_at_epoch"],
            trained_with=trained_with,
        )


def train_outputs(
    model_paths: Sequence[str | Path], history_paths: Sequence[str | Path]
) -> dict[str, tuple[Path, Path]]:
    """variant -> (model, history) of the train stages, matched by name: models/<variant>.json, history/<variant>.csv.

    evaluate and track compare and publish every variant, so each must have both files.
    """
    models = {Path(path).stem: Path(path) for path in model_paths}
    histories = {Path(path).stem: Path(path) for path in history_paths}
    # Exactly one file of each kind per variant: as many paths as variants, every variant named, and
    # each kind by its extension (--models and --histories swapped would otherwise fail as bad JSON).
    kinds_right = all(Path(path).suffix == ".json" for path in model_paths) and all(
        Path(path).suffix == ".csv" for path in history_paths
    )
    if (
        not len(model_paths) == len(history_paths) == len(VARIANTS)
        or set(models) != set(VARIANTS)
        or set(histories) != set(VARIANTS)
        or not kinds_right
    ):
        given = ", ".join(str(path) for path in (*model_paths, *history_paths)) or "none"
        raise InputError(
            f"expected one <variant>.json model and one <variant>.csv history for each of {', '.join(VARIANTS)}; "
            f"got {given}"
        )
    return {variant: (models[variant], histories[variant]) for variant in VARIANTS}
