"""The lesson's math as small pure functions: the model, its loss, the hand-derived gradient, the
closed-form optimum and the learning rates that converge.

The NumPy variant calls `predict`, `mse` and `mse_grad` (or the lesson's own `lesson_grad`), and
the tests hold `mse_grad` against torch autograd. On NumPy's float32 data the residual is formed in
float32, as in the lesson, and every sum over the data is taken in float64, chunk by chunk in a
fixed order, by NumPy's own loops (np.einsum, never BLAS): the sums neither lose digits at millions
of points nor depend on the BLAS kernel or its thread count, and no float64 copy of the data is made.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# 16 Ki points per chunk: the chunk's float64 copies (256 KiB) stay in L2 cache from the pass
# that forms them to the sum that reads them.
CHUNK = 1 << 14


def predict(w, x):
    """The model f(x) = w * x (on NumPy arrays and torch tensors alike)."""
    return w * x


def mse(y_hat: np.ndarray, y: np.ndarray) -> float:
    """The loss L = mean((y_hat - y)^2)."""
    total = 0.0
    for part in _chunks(y.size):
        r = _float64(y_hat[part] - y[part])
        total += float(np.einsum("i,i->", r, r))
    return total / y.size


def mse_grad(x: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> float:
    """dL/dw = 2 * mean(x * (y_hat - y)), the derivative of `mse(predict(w, x), y)` by hand."""
    return 2.0 / x.size * _sum_x_residual(x, y, y_hat)


def lesson_grad(x: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> float:
    """The lesson's line `np.dot(2*x, y_hat - y).mean()`: n times `mse_grad`.

    np.dot already returns the sum, so `.mean()` of that scalar changes nothing: the lesson steps
    along the gradient of the summed squared error, not of the mean it reports as its loss.
    """
    return 2.0 * _sum_x_residual(x, y, y_hat)


def _sum_x_residual(x: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> float:
    """sum(x * (y_hat - y)): the products are exact in float64 and summed there."""
    total = 0.0
    for part in _chunks(x.size):
        total += float(np.einsum("i,i->", _float64(x[part]), _float64(y_hat[part] - y[part])))
    return total


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b), accumulated in float64 chunk by chunk."""
    return sum(float(np.einsum("i,i->", _float64(a[part]), _float64(b[part]))) for part in _chunks(a.size))


def optimal_w(x: np.ndarray, y: np.ndarray) -> float:
    """Closed-form least-squares optimum of the MSE over w: w* = sum(x*y) / sum(x^2)."""
    return dot64(x, y) / dot64(x, x)


def lr_bound(x: np.ndarray, gradient: str = "mean") -> float:
    """Largest stable learning rate: gradient descent converges only for 0 < lr < this value.

    The loss is a parabola in w with curvature 2*mean(x^2), so each step multiplies the error
    by (1 - 2*lr*mean(x^2)); it shrinks only if lr < 1/mean(x^2). The lesson's summed gradient
    is n times larger, so its bound is n times smaller.
    """
    mean_x2 = dot64(x, x) / x.size
    return 1.0 / mean_x2 / (x.size if gradient == "sum" else 1)


def _chunks(size: int) -> Iterator[slice]:
    return (slice(start, start + CHUNK) for start in range(0, size, CHUNK))


def _float64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)
