"""The data set: y = true_w * x + noise, float32, stored as a byte-reproducible .npz."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdpipe.config import DataParams
from gdpipe.errors import InputError
from gdpipe.files import atomic_write

# Fixed zip timestamps: np.savez stamps the current time, so equal data would hash differently.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_NOISE_CHUNK = 1 << 20  # noise is drawn in chunks so memory stays close to the size of x and y
# The largest |x| and |y| whose squares fit float32: beyond it the loss (and x * residual) overflows
# before gradient descent has taken a step, whatever the learning rate.
SQUARE_SAFE = float(np.sqrt(np.finfo(np.float32).max))


@dataclass(frozen=True)
class Dataset:
    """Inputs x and targets y, equal-length float32 vectors."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        assert self.x.dtype == self.y.dtype == np.float32 and self.x.shape == self.y.shape and self.x.ndim == 1


def generate(params: DataParams) -> Dataset:
    """Build the data set the params describe; the defaults give the lesson's x = 1..4, y = 2x."""
    x_stream, noise_stream = (np.random.default_rng(s) for s in np.random.SeedSequence(params.seed).spawn(2))
    n = params.n_samples
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, with the params to blame
        if params.x_layout == "grid":
            x = np.arange(1, n + 1, dtype=np.float32)
        else:
            x = x_stream.random(n, dtype=np.float32)
            x *= np.float32(params.x_high - params.x_low)
            x += np.float32(params.x_low)
        y = x * np.float32(params.true_w)
        if params.noise_std > 0:
            for start in range(0, n, _NOISE_CHUNK):
                chunk = y[start : start + _NOISE_CHUNK]
                chunk += np.float32(params.noise_std) * noise_stream.standard_normal(chunk.size, dtype=np.float32)
    # The largest magnitude (NaN or infinity if there is one) tells both whether x and y overflowed
    # and whether their squares fit float32.
    largest_x, largest_y = _max_abs(x), _max_abs(y)
    if not np.isfinite(largest_x):
        raise InputError(f"data: x_high - x_low = {params.x_high - params.x_low:g} is beyond float32's range; narrow data.x_low .. data.x_high")
    if largest_x == 0:
        raise InputError(f"data: every x is 0 in float32 (data.x_low = {params.x_low:g}, data.x_high = {params.x_high:g}), so w cannot be fitted; widen the range")
    if largest_x >= SQUARE_SAFE:
        raise InputError(f"data: |x| reaches {largest_x:.3g}, and x^2 must fit float32 (|x| < {SQUARE_SAFE:.3g}); narrow data.x_low .. data.x_high")
    if not largest_y < SQUARE_SAFE:  # NaN or infinity too
        raise InputError(
            f"data: y = true_w * x + noise reaches {largest_y:.3g} (data.true_w = {params.true_w:g}, data.noise_std = {params.noise_std:g}, "
            f"|x| up to {n if params.x_layout == 'grid' else max(abs(params.x_low), abs(params.x_high)):g}), and y^2, the loss at w = 0, "
            f"must fit float32 (|y| < {SQUARE_SAFE:.3g}); use smaller values"
        )
    return Dataset(x=x, y=y)


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or infinity in `a`, checked chunk by chunk (no full-size temporary)."""
    return all(np.isfinite(a[start : start + _NOISE_CHUNK]).all() for start in range(0, a.size, _NOISE_CHUNK))


def _max_abs(a: np.ndarray) -> float:
    """The largest |value| in `a`, chunk by chunk: NaN if there is one, else infinity if there is one."""
    return float(np.max([np.abs(a[start : start + _NOISE_CHUNK]).max() for start in range(0, a.size, _NOISE_CHUNK)]))  # np.max keeps NaN


def save(dataset: Dataset, path: str | Path) -> None:
    """Write x and y as an uncompressed .npz, atomically and byte-identically for equal data."""
    with atomic_write(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name, array in (("x", dataset.x), ("y", dataset.y)):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            member.external_attr = 0o644 << 16
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


def load(path: str | Path) -> Dataset:
    """Read a data set written by `save`; InputError naming the file if it is missing or corrupt."""
    path = Path(path)
    try:
        # Open the file here: np.load leaves its own handle open when the archive is corrupt.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (run the generate stage: dvc repro)") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable data set with float32 arrays x and y ({err})") from None
    if x.dtype != np.float32 or y.dtype != np.float32 or x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise InputError(f"{path}: x and y must be non-empty float32 vectors of equal length, got {x.dtype}{x.shape} and {y.dtype}{y.shape}")
    if not (_all_finite(x) and _all_finite(y)):
        raise InputError(f"{path}: x and y must be finite, found NaN or infinity (rerun the generate stage: dvc repro)")
    if not np.any(x):
        raise InputError(f"{path}: every x is 0, so w cannot be fitted (rerun the generate stage: dvc repro)")
    return Dataset(x=x, y=y)
