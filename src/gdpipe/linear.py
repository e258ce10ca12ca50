"""The lesson's math as small pure functions: model, loss, hand gradient, optimum, stability bound.

`predict` and `mse` work on NumPy arrays and torch tensors alike, so both variants share them;
`mse_grad` is the hand-derived gradient that the NumPy variant uses and the tests hold against
torch autograd. `residual_sums` is the same gradient computed in one cache-friendly pass for
large data, checked against `mse` and `mse_grad` in the tests.
"""

from __future__ import annotations

import numpy as np

# 16 Ki points per chunk: the float32 residual and the two float64 buffers (320 KiB) stay in L2
# cache from the pass that forms them to the sums that read them.
CHUNK = 1 << 14


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

    r is formed in float32 like the lesson's forward pass; the products are exact in float64 and
    summed in float64, chunk by chunk in a fixed order, by NumPy's own loops (np.einsum, not BLAS),
    so the sums neither lose digits at millions of points nor depend on the BLAS kernel or its
    thread count. MSE = sum_rr / n and dL/dw = 2 * sum_xr / n.
    """
    size = min(CHUNK, x.size)
    r = np.empty(size, dtype=np.float32)
    r64 = np.empty(size, dtype=np.float64)
    x64 = np.empty(size, dtype=np.float64)
    sum_rr = sum_xr = 0.0
    for start in range(0, x.size, CHUNK):
        xs, ys = x[start : start + CHUNK], y[start : start + CHUNK]
        m = xs.size
        rs, rs64, xs64 = r[:m], r64[:m], x64[:m]
        np.multiply(xs, w, out=rs)
        np.subtract(rs, ys, out=rs)
        np.copyto(rs64, rs)
        np.copyto(xs64, xs)
        sum_rr += float(np.einsum("i,i->", rs64, rs64))
        sum_xr += float(np.einsum("i,i->", xs64, rs64))
    return sum_rr, sum_xr


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a*b) accumulated in float64 chunk by chunk (no full-size float64 copy, no BLAS)."""
    total = 0.0
    for start in range(0, a.size, CHUNK):
        total += float(np.einsum("i,i->", a[start : start + CHUNK].astype(np.float64), b[start : start + CHUNK].astype(np.float64)))
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
