"""The PyTorch variant: gradient descent with autograd, exactly as the lesson teaches it."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.functional import mse_loss

from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError
from gdpipe.core.config import TrainParams
from gdpipe.linear import predict


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` (which must exist) or `auto` (cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.torch.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


class TorchStepper:
    """loss.backward(), then w -= lr * w.grad under no_grad, then zero the gradient."""

    def __init__(self, data: Dataset, params: TrainParams) -> None:
        device = resolve_device(params.torch.device)
        self.x = torch.from_numpy(data.x).to(device)
        self.y = torch.from_numpy(data.y).to(device)
        self.lr = params.lr
        self.w = torch.tensor(params.w_init, dtype=torch.float32, device=device, requires_grad=True)
        # The record stays on the device during training and is copied to the host once at the end.
        self.ws = torch.empty(params.epochs, dtype=torch.float32, device=device)
        self.losses = torch.empty(params.epochs, dtype=torch.float32, device=device)

    def step(self, index: int) -> None:
        # mse_loss is the lesson's ((y_hat - y)**2).mean() as one fused kernel forward and one
        # backward: the same numbers (a test holds them equal) with fewer full-size temporaries.
        loss = mse_loss(predict(self.w, self.x), self.y)
        loss.backward()
        with torch.no_grad():
            self.w -= self.lr * self.w.grad
            self.ws[index] = self.w
            self.losses[index] = loss
        self.w.grad.zero_()

    def all_finite(self) -> bool:
        return bool(torch.isfinite(self.w))

    def trajectory(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ws[:epochs_run].cpu().numpy(), self.losses[:epochs_run].cpu().numpy()
