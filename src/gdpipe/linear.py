"""The lesson's math as small pure functions: model, loss, hand gradient, optimum, stability bound.

`predict` and `mse` work on NumPy arrays and torch tensors alike, so both variants share them;
`mse_grad` is the hand-derived gradient that the NumPy variant uses and the tests hold against
torch autograd. `residual_sums` is the same gradient computed in one cache-friendly pass for
large data, checked against `mse` and `mse_grad` in the tests.
"""

from __future__ import annotations

import numpy as np

# 64 Ki float32 values = 256 KiB per buffer: a chunk's residual stays in cache between uses.
CHUNK = 1 << 16


def predict(w, x):
    """The model f(x) = w * x."""
    return w * x


def mse(y_hat, y):
    """Mean squared error L = mean((y_hat - y)^2)."""
    return ((y_hat - y) ** 2).mean()


def mse_grad(w, x, y):
    """dL/dw = 2 * mean(x * (w*x - y)), the hand-derived gradient of `mse(predict(w, x), y)`."""
    return 2 * (x * (predict(w, x) - y)).mean()


def residual_sums(w: np.float32, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(sum of r^2, sum of x*r) for r = w*x - y, in one pass.

    r is formed in float32 like the lesson's forward pass; the sums accumulate in float64, chunk
    by chunk, so they neither lose digits at millions of points nor depend on which BLAS kernel
    the machine picks. MSE = sum_rr / n and dL/dw = 2 * sum_xr / n.
    """
    r = np.empty(min(CHUNK, x.size), dtype=np.float32)
    r64 = np.empty(r.size, dtype=np.float64)
    x64 = np.empty(r.size, dtype=np.float64)
    sum_rr = sum_xr = 0.0
    for start in range(0, x.size, CHUNK):
        xs, ys = x[start : start + CHUNK], y[start : start + CHUNK]
        m = xs.size
        np.multiply(xs, w, out=r[:m])
        np.subtract(r[:m], ys, out=r[:m])
        np.copyto(r64[:m], r[:m])
        np.copyto(x64[:m], xs)
        sum_rr += float(np.dot(r64[:m], r64[:m]))
        sum_xr += float(np.dot(x64[:m], r64[:m]))
    return sum_rr, sum_xr


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a*b) accumulated in float64 chunk by chunk (no full-size float64 copy)."""
    total = 0.0
    for start in range(0, a.size, CHUNK):
        total += float(np.dot(a[start : start + CHUNK].astype(np.float64), b[start : start + CHUNK].astype(np.float64)))
    return total


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
