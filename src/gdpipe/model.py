"""The trained model f(x) = w * x as a small JSON record: what train writes and evaluate and track read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from gdpipe.config import VARIANTS
from gdpipe.errors import InputError
from gdpipe.files import read_json, require_finite, write_json
from gdpipe.history import History


@dataclass(frozen=True)
class TrainedModel:
    """The final w of one variant; `w` is None when training diverged before its first finite update."""

    variant: str
    w: float | None
    epochs_trained: int  # last epoch with a finite w and loss
    diverged_at_epoch: int | None

    @classmethod
    def from_history(cls, variant: str, history: History) -> TrainedModel:
        """The model at the last recorded (always the last finite) epoch."""
        trained = bool(history.epoch.size)
        return cls(
            variant=variant,
            w=float(history.w[-1]) if trained else None,
            epochs_trained=int(history.epoch[-1]) if trained else 0,
            diverged_at_epoch=history.diverged_at,
        )

    @property
    def diverged(self) -> bool:
        return self.diverged_at_epoch is not None

    def save(self, path: str | Path) -> None:
        """Write the record atomically as JSON."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        """Read a record written by `save`; InputError naming the file if it is malformed."""
        path = Path(path)
        record = read_json(path)
        if not isinstance(record, dict) or set(record) != set(cls.__dataclass_fields__):
            raise InputError(f"{path}: expected a JSON object with the keys {', '.join(cls.__dataclass_fields__)}")
        if record["variant"] not in VARIANTS:
            raise InputError(f"{path}: variant must be one of {', '.join(VARIANTS)}, got {record['variant']!r}")
        w = None if record["w"] is None else require_finite(path, "w", record["w"])
        for key in ("epochs_trained", "diverged_at_epoch"):
            value = record[key]
            if value is None and key == "diverged_at_epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{path}: {key} must be a whole number >= 0, got {value!r}")
        return cls(variant=record["variant"], w=w, epochs_trained=record["epochs_trained"], diverged_at_epoch=record["diverged_at_epoch"])
