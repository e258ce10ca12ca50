"""The NumPy variant: gradient descent with the hand-derived gradient, step for step as the lesson writes it."""

from __future__ import annotations

import numpy as np

from gdpipe.core.artifacts import Dataset
from gdpipe.core.config import TrainParams
from gdpipe.linear import lesson_grad, mse, mse_grad, predict


class NumpyStepper:
    """Forward, loss, hand gradient, `w -= lr * dw`; w and the loss in float32, like the data and torch."""

    def __init__(self, data: Dataset, params: TrainParams) -> None:
        self.x, self.y = data.x, data.y
        self.lr = params.lr
        # mean: the true gradient of the MSE; sum: the lesson's line, n times larger.
        self.gradient = mse_grad if params.numpy.gradient == "mean" else lesson_grad
        self.w = np.float32(params.w_init)
        self.ws = np.empty(params.epochs, dtype=np.float32)
        # The loss in float32 too, as the lesson's and torch's: a loss beyond float32's range is a divergence in both.
        self.losses = np.empty(params.epochs, dtype=np.float32)

    def step(self, index: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected by the loop, not warned about
            y_hat = predict(self.w, self.x)
            loss = mse(y_hat, self.y)
            dw = self.gradient(self.x, self.y, y_hat)
            self.w -= self.lr * dw  # w stays float32: NumPy rounds the Python float step to it
            self.losses[index] = loss
        self.ws[index] = self.w

    def all_finite(self) -> bool:
        return bool(np.isfinite(self.w))

    def trajectory(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ws[:epochs_run], self.losses[:epochs_run]
