"""The training loop both variants share: run the epochs, stop on divergence, return a History."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from gdpipe.core import progress
from gdpipe.core.artifacts import History

# How many epochs run between divergence checks; a check may force a device sync.
CHECK_EVERY = 256


class Stepper(Protocol):
    """One variant's gradient-descent step, which keeps its own per-epoch record of w and loss."""

    def step(self, index: int) -> None:
        """Run epoch `index` (0-based): forward, loss, gradient, update; record loss and the new w."""

    def all_finite(self) -> bool:
        """Whether w is still finite (NaN or infinity never recover)."""

    def trajectory(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        """w and loss of the first `epochs_run` epochs, copied to host memory once."""


def fit(stepper: Stepper, epochs: int, log_every: int, label: str) -> History:
    """Run up to `epochs` steps, stopping soon after w stops being finite; a progress bar on a terminal."""
    epochs_run = 0
    with progress.bar(epochs, label, "epoch") as bar:
        while epochs_run < epochs:
            block_end = min(epochs_run + CHECK_EVERY, epochs)
            for index in range(epochs_run, block_end):
                stepper.step(index)
            bar.update(block_end - epochs_run)
            epochs_run = block_end
            if not stepper.all_finite():
                break
    w, loss = stepper.trajectory(epochs_run)
    return History.from_trajectory(w, loss, log_every)
