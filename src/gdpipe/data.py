"""The generate stage's work: the data set y = true_w * x + noise in float32, refused when its squares
would overflow float32 (then no learning rate could fit it)."""

from __future__ import annotations

import numpy as np

from gdpipe.core import memory
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError
from gdpipe.core.config import DataParams

_CHUNK = 1 << 20  # noise is drawn in chunks so memory stays close to the size of x and y
# The largest |x| and |y| whose squares fit float32: beyond it the loss (and x * residual) overflows
# before gradient descent has taken a step, whatever the learning rate.
SQUARE_SAFE = float(np.sqrt(np.finfo(np.float32).max))


def generate(params: DataParams) -> Dataset:
    """Build the data set the params describe; the defaults give the lesson's x = 1..4, y = 2x."""
    try:
        return _generate(params)
    except MemoryError:  # a limit (ulimit -v, a container's) refused x or y: say the size, not a traceback
        raise InputError(f"data: not enough memory: {memory.describe(params.n_samples)}") from None


def _generate(params: DataParams) -> Dataset:
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
            for start in range(0, n, _CHUNK):
                chunk = y[start : start + _CHUNK]
                chunk += np.float32(params.noise_std) * noise_stream.standard_normal(chunk.size, dtype=np.float32)
    # The largest magnitude (NaN or infinity if there is one) tells both whether x and y overflowed
    # and whether their squares fit float32.
    largest_x, largest_y = _max_abs(x), _max_abs(y)
    if not np.isfinite(largest_x):
        raise InputError(
            f"data: x_high - x_low = {params.x_high - params.x_low:g} is beyond float32's range; "
            "narrow data.x_low .. data.x_high"
        )
    if largest_x == 0:
        raise InputError(
            f"data: every x is 0 in float32 (data.x_low = {params.x_low:g}, data.x_high = {params.x_high:g}), "
            "so w cannot be fitted; widen the range"
        )
    if largest_x >= SQUARE_SAFE:
        raise InputError(
            f"data: |x| reaches {largest_x:.3g}, and x^2 must fit float32 (|x| < {SQUARE_SAFE:.3g}); "
            "narrow data.x_low .. data.x_high"
        )
    if not largest_y < SQUARE_SAFE:  # NaN or infinity too
        x_bound = n if params.x_layout == "grid" else max(abs(params.x_low), abs(params.x_high))
        raise InputError(
            f"data: y = true_w * x + noise reaches {largest_y:.3g} (data.true_w = {params.true_w:g}, "
            f"data.noise_std = {params.noise_std:g}, |x| up to {x_bound:g}), and y^2, the loss at w = 0, "
            f"must fit float32 (|y| < {SQUARE_SAFE:.3g}); use smaller values"
        )
    return Dataset(x=x, y=y)


def _max_abs(a: np.ndarray) -> float:
    """The largest |value| in `a`, chunk by chunk: NaN if there is one, else infinity if there is one."""
    largest_per_chunk = [np.abs(a[start : start + _CHUNK]).max() for start in range(0, a.size, _CHUNK)]
    return float(np.max(largest_per_chunk))  # np.max keeps NaN
