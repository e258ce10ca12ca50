"""The math: the hand gradient equals torch autograd, the fused kernel equals the formulas, the optimum and the bound are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gdpipe import linear

finite32 = st.floats(min_value=-100, max_value=100, allow_nan=False, width=32)


@st.composite
def problems(draw):
    """A random (w, x, y) of 1 to 64 points."""
    n = draw(st.integers(min_value=1, max_value=64))
    x = draw(arrays(np.float32, n, elements=finite32))
    y = draw(arrays(np.float32, n, elements=finite32))
    return np.float32(draw(finite32)), x, y


@settings(max_examples=300, deadline=None)
@given(problems())
def test_hand_gradient_equals_autograd(problem):
    """micrograd-style parity: the same expression through NumPy by hand and through torch.autograd."""
    w, x, y = problem
    w_t = torch.tensor(float(w), dtype=torch.float64, requires_grad=True)
    loss = linear.mse(linear.predict(w_t, torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y.astype(np.float64)))
    loss.backward()
    hand = linear.mse_grad(np.float64(w), x.astype(np.float64), y.astype(np.float64))
    scale = 2 * np.mean(np.abs(x.astype(np.float64) * (np.float64(w) * x - y))) + 1e-300
    assert abs(hand - w_t.grad.item()) <= 1e-12 * scale


@settings(max_examples=200, deadline=None)
@given(problems())
def test_residual_sums_give_the_mse_and_its_gradient(problem):
    w, x, y = problem
    sum_rr, sum_xr = linear.residual_sums(w, x, y)
    # Reference: the formulas on the same float32 residual, summed exactly enough in float64.
    r = (w * x - y).astype(np.float64)
    assert sum_rr / x.size == pytest.approx(linear.mse(r, 0.0), rel=1e-12, abs=1e-300)
    assert 2 * sum_xr / x.size == pytest.approx(2 * np.mean(x.astype(np.float64) * r), rel=1e-9, abs=1e-9 * np.mean(np.abs(x * r)))


def test_residual_sums_cover_every_chunk():
    """Data longer than one chunk, with a ragged tail: each point counts exactly once."""
    n = 3 * linear.CHUNK + 17
    x = np.ones(n, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    assert linear.residual_sums(np.float32(2), x, y) == (4.0 * n, 2.0 * n)


def test_residual_sums_keep_digits_that_float32_accumulation_loses():
    """10 million residuals of 0.1: float64 sums stay exact to 1e-9, a float32 running sum would be far off."""
    n = 10_000_000
    x = np.ones(n, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    sum_rr, sum_xr = linear.residual_sums(np.float32(0.1), x, y)
    expected = float(np.float32(0.1)) * n
    assert sum_xr == pytest.approx(expected, rel=1e-9)
    assert sum_rr == pytest.approx(float(np.float32(0.1)) ** 2 * n, rel=1e-9)


def test_optimal_w_is_the_least_squares_solution():
    rng = np.random.default_rng(1)
    x = rng.normal(size=1000).astype(np.float32)
    y = (3 * x + rng.normal(size=1000)).astype(np.float32)
    expected = np.linalg.lstsq(x[:, None].astype(np.float64), y.astype(np.float64), rcond=None)[0][0]
    assert linear.optimal_w(x, y) == pytest.approx(expected, rel=1e-12)
    assert linear.optimal_w(np.array([1, 2, 3, 4], np.float32), np.array([2, 4, 6, 8], np.float32)) == 2.0


def test_lr_bound_of_the_lessons_data():
    x = np.array([1, 2, 3, 4], dtype=np.float32)
    assert linear.lr_bound(x) == pytest.approx(1 / 7.5)  # 0.1333: 1/mean(x^2)
    assert linear.lr_bound(x, "sum") == pytest.approx(1 / 30)  # the summed gradient is 4 times larger


def test_sums_do_not_go_through_blas(monkeypatch):
    """BLAS sums in an order that depends on its kernel and thread count; the kernel must not use it."""

    def no_blas(*args, **kwargs):
        raise AssertionError("BLAS dot called")

    x = np.linspace(-1, 1, 2 * linear.CHUNK + 5, dtype=np.float32)
    expected = linear.residual_sums(np.float32(0.5), x, 2 * x), linear.optimal_w(x, 2 * x)
    for name in ("dot", "vdot", "inner", "matmul", "vecdot"):
        monkeypatch.setattr(np, name, no_blas)
    assert (linear.residual_sums(np.float32(0.5), x, 2 * x), linear.optimal_w(x, 2 * x)) == expected


@settings(max_examples=200, deadline=None)
@given(problems())
def test_torch_variants_fused_loss_is_the_lessons_mse(problem):
    """The torch variant uses F.mse_loss for a leaner graph: same value and same autograd gradient as linear.mse."""
    from torch.nn.functional import mse_loss

    w, x, y = problem
    x_t, y_t = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    grads, losses = [], []
    for loss_fn in (linear.mse, mse_loss):
        w_t = torch.tensor(float(w), dtype=torch.float64, requires_grad=True)
        loss = loss_fn(linear.predict(w_t, x_t), y_t)
        loss.backward()
        losses.append(loss.item())
        grads.append(w_t.grad.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-12, abs=1e-300)
    scale = abs(grads[0]) + float(np.mean(np.abs(x.astype(np.float64) * (float(w) * x - y))))
    assert grads[1] == pytest.approx(grads[0], rel=1e-9, abs=1e-9 * scale + 1e-300)
