"""The trained model f(x) = w * x as a small JSON record: what train writes and evaluate and track read."""

from __future__ import annotations

from collections.abc import Sequence
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
        return cls(variant=record["variant"], w=w, epochs_trained=record["epochs_trained"], diverged_at_epoch=record["diverged_at_epoch"])


def train_outputs(model_paths: Sequence[str | Path], history_paths: Sequence[str | Path]) -> dict[str, tuple[Path, Path]]:
    """variant -> (model, history) of the train stages, matched by name: models/<variant>.json, history/<variant>.csv.

    evaluate and track compare and publish every variant, so each must have both files.
    """
    models = {Path(path).stem: Path(path) for path in model_paths}
    histories = {Path(path).stem: Path(path) for path in history_paths}
    # Exactly one file of each kind per variant: as many paths as variants, every variant named, and
    # each kind by its extension (--models and --histories swapped would otherwise fail as bad JSON).
    kinds_right = all(Path(path).suffix == ".json" for path in model_paths) and all(Path(path).suffix == ".csv" for path in history_paths)
    if not len(model_paths) == len(history_paths) == len(VARIANTS) or set(models) != set(VARIANTS) or set(histories) != set(VARIANTS) or not kinds_right:
        given = ", ".join(str(path) for path in (*model_paths, *history_paths)) or "none"
        raise InputError(f"expected one <variant>.json model and one <variant>.csv history for each of {', '.join(VARIANTS)}; got {given}")
    return {variant: (models[variant], histories[variant]) for variant in VARIANTS}
