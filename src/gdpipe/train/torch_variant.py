"""The PyTorch variant: gradient descent with autograd, as the lesson teaches it, summed over fixed chunks.

Each epoch runs forward, loss and backward() on every chunk of this process's data (gdpipe.train.chunks),
then adds the chunks' losses and gradients in float64, exactly rounded: the same bits however many threads
or processes (gdpipe.train.distributed) share the chunks. With one chunk (n <= 16,384, the lesson's 4
points among them) this is torch's own mse_loss(...).backward() on the whole data, bit for bit.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.functional import mse_loss

from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError
from gdpipe.core.config import TrainParams
from gdpipe.linear import predict
from gdpipe.train import chunks

# Every chunk's (sum of squared errors, gradient) of one process, in float64 -> those of all chunks, in
# chunk order. One process has them all already.
Gather = Callable[[torch.Tensor], torch.Tensor]


# glibc's malloc (Linux's) returns freed memory at the top of its heap to the system beyond a threshold it
# raises only as far as the largest block it once mapped (4 MiB here), so each block's temporaries were
# page-faulted in anew: 26 MB of faults per epoch at 10^7 points, 10 of its 50 ms. Fixed thresholds keep
# blocks under 64 MiB in the heap and up to 256 MiB freed there for reuse: no fault after the first epoch.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed memory for reuse; elsewhere (macOS, musl) nothing to do."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 64 << 20)
        mallopt(M_TRIM_THRESHOLD, 256 << 20)


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` (which must exist) or `auto` (cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.torch.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


class TorchStepper:
    """Per chunk: forward, loss, backward(); then w -= lr * dw, dw the chunks' gradients summed exactly.

    `data` is this process's chunks (all of them by default), of a data set of `n` points.
    """

    def __init__(
        self,
        data: Dataset,
        params: TrainParams,
        n: int | None = None,
        gather: Gather = lambda parts: parts,
        device: torch.device | None = None,
    ) -> None:
        device = device or resolve_device(params.torch.device)
        keep_freed_memory()
        x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
        # One row per chunk, a few MiB of rows at a time: autograd's temporaries stay that size.
        self.blocks = [
            (x[start : start + rows * size].view(rows, size), y[start : start + rows * size].view(rows, size))
            for start, rows, size in chunks.blocks(x.numel())
        ]
        self.n = data.x.size if n is None else n
        self.gather = gather
        self.lr = params.lr
        self.w = torch.tensor(params.w_init, dtype=torch.float32, device=device)
        # The record stays on the device during training and is copied to the host once at the end.
        self.ws = torch.empty(params.epochs, dtype=torch.float32, device=device)
        self.losses = torch.empty(params.epochs, dtype=torch.float32, device=device)
        self.no_parts = torch.empty((0, 2), dtype=torch.float64, device=device)

    def step(self, index: int) -> None:
        parts = []
        for x, y in self.blocks:
            # Each chunk (row) its own copy of w, so that backward() leaves each chunk's gradient in its w.grad.
            w = self.w.expand(len(x), 1).clone().requires_grad_()
            y_hat = predict(w, x)  # forward
            sse = mse_loss(y_hat, y, reduction="none").sum(dim=1)  # loss: each chunk's sum of squared errors
            (sse / self.n).sum().backward()  # backward: w.grad[k], the gradient of chunk k's part of the mean
            parts.append(torch.stack((sse.detach(), w.grad.view(-1)), dim=1).double())
        sse, grad = self.gather(torch.cat(parts) if parts else self.no_parts).T.tolist()
        # The mean squared error and its gradient over all n points: float64 sums, exactly rounded.
        loss, dw = chunks.total(sse) / self.n, torch.tensor(chunks.total(grad), dtype=torch.float32)
        self.w -= self.lr * dw  # update
        self.ws[index] = self.w
        self.losses[index] = loss

    def all_finite(self) -> bool:
        return bool(torch.isfinite(self.w))

    def trajectory(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ws[:epochs_run].cpu().numpy(), self.losses[:epochs_run].cpu().numpy()
