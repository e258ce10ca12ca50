"""The NumPy variant: gradient descent with the hand-derived gradient."""

from __future__ import annotations

import numpy as np

from gdpipe.config import TrainParams
from gdpipe.data import Dataset
from gdpipe.history import History
from gdpipe.linear import residual_sums
from gdpipe.loop import fit


class NumpyStepper:
    """w -= lr * dL/dw with dL/dw = 2*mean(x*(w*x - y)) (or the lesson's sum, n times larger)."""

    def __init__(self, data: Dataset, params: TrainParams) -> None:
        self.x, self.y = data.x, data.y
        self.lr = params.lr
        # The lesson's np.dot(2*x, y_hat - y).mean() is a sum: .mean() of a scalar changes nothing.
        self.grad_scale = 2.0 / self.x.size if params.numpy.gradient == "mean" else 2.0
        self.w = np.float32(params.w_init)  # float32 like the data and the torch variant
        self.ws = np.empty(params.epochs, dtype=np.float32)
        # The loss in float32 too, as the lesson's and torch's: a loss beyond float32's range is a divergence in both.
        self.losses = np.empty(params.epochs, dtype=np.float32)

    def step(self, index: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected by the loop, not warned about
            sum_rr, sum_xr = residual_sums(self.w, self.x, self.y)
            self.w = np.float32(self.w - self.lr * (self.grad_scale * sum_xr))
            self.losses[index] = sum_rr / self.x.size
        self.ws[index] = self.w

    def all_finite(self) -> bool:
        return bool(np.isfinite(self.w))

    def trajectory(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ws[:epochs_run], self.losses[:epochs_run]


def train(data: Dataset, params: TrainParams) -> History:
    """Fit w by full-batch gradient descent with the hand-written gradient."""
    return fit(NumpyStepper(data, params), params.epochs, params.log_every, label="train numpy")
