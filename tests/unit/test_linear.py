"""The math: the hand gradient equals torch autograd, the float64 sums are exact enough and the same on
every machine, the optimum and the bound are right."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.nn.functional import mse_loss

from gdpipe import linear
from support import PROGRAMS, REPO

finite32 = st.floats(min_value=-100, max_value=100, allow_nan=False, width=32)


@st.composite
def problems(draw):
    """A random (w, x, y) of 1 to 64 points."""
    n = draw(st.integers(min_value=1, max_value=64))
    x = draw(arrays(np.float32, n, elements=finite32))
    y = draw(arrays(np.float32, n, elements=finite32))
    return np.float32(draw(finite32)), x, y


def lessons_loss(y_hat, y):
    """The lesson's loss, ((y_predicted - y)**2).mean(), as it writes it for torch."""
    return ((y_hat - y) ** 2).mean()


@settings(max_examples=300, deadline=None)
@given(problems())
def test_hand_gradient_equals_autograd(problem):
    """micrograd-style parity: the lesson's loss through torch.autograd, and mse and mse_grad by hand, at the same
    point.
    """
    w, x, y = problem
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    w_t = torch.tensor(float(w), dtype=torch.float64, requires_grad=True)
    loss = lessons_loss(linear.predict(w_t, torch.from_numpy(x64)), torch.from_numpy(y64))
    loss.backward()
    y_hat = linear.predict(np.float64(w), x64)
    scale = 2 * np.mean(np.abs(x64 * (np.float64(w) * x64 - y64))) + 1e-300
    assert abs(linear.mse_grad(x64, y64, y_hat) - w_t.grad.item()) <= 1e-12 * scale
    assert linear.mse(y_hat, y64) == pytest.approx(loss.item(), rel=1e-12, abs=1e-300)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_mse_and_its_gradient_on_float32_data_are_the_formulas_summed_in_float64(problem):
    w, x, y = problem
    y_hat = linear.predict(w, x)
    assert y_hat.dtype == np.float32  # the forward pass stays float32, as in the lesson
    # Reference: the formulas on the same float32 residual, summed exactly enough in float64.
    r = (y_hat - y).astype(np.float64)
    assert linear.mse(y_hat, y) == pytest.approx(np.mean(r * r), rel=1e-12, abs=1e-300)
    scale = 1e-9 * np.mean(np.abs(x * r))
    assert linear.mse_grad(x, y, y_hat) == pytest.approx(2 * np.mean(x.astype(np.float64) * r), rel=1e-9, abs=scale)
    assert linear.lesson_grad(x, y, y_hat) == pytest.approx(
        x.size * linear.mse_grad(x, y, y_hat), rel=1e-12, abs=1e-300
    )


def test_every_chunk_counts_once():
    """Data longer than one chunk, with a ragged tail: each point counts exactly once."""
    n = 3 * linear.CHUNK + 17
    x = np.ones(n, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    y_hat = linear.predict(np.float32(2), x)
    assert (linear.mse(y_hat, y), linear.lesson_grad(x, y, y_hat), linear.dot64(x, x)) == (4.0, 4.0 * n, float(n))


def test_float64_sums_keep_digits_that_float32_accumulation_loses():
    """10 million residuals of 0.1: the float64 sums stay exact to 1e-9, a float32 running sum would be far off."""
    n = 10_000_000
    x = np.ones(n, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    y_hat = linear.predict(np.float32(0.1), x)
    assert linear.lesson_grad(x, y, y_hat) / 2 == pytest.approx(float(np.float32(0.1)) * n, rel=1e-9)
    assert linear.mse(y_hat, y) == pytest.approx(float(np.float32(0.1)) ** 2, rel=1e-9)


def test_sums_over_the_data_are_float64_accurate_where_float32_accumulation_is_not():
    """Against math.fsum (exact, then rounded once): float64 chunked sums are off by rounding, a float32 running sum is
    not close.
    """
    rng = np.random.default_rng(3)
    n = 5 * linear.CHUNK + 3
    x = rng.uniform(0, 3, n).astype(np.float32)
    y = (2 * x + rng.normal(0, 1, n)).astype(np.float32)
    y_hat = linear.predict(np.float32(1.9), x)
    r = (y_hat - y).astype(np.float64)
    exact = {
        "rr": math.fsum((r * r).tolist()),
        "xr": math.fsum((x * r).tolist()),
        "xy": math.fsum((x.astype(np.float64) * y).tolist()),
    }
    scale = {
        "rr": exact["rr"],
        "xr": math.fsum(np.abs(x * r).tolist()),
        "xy": math.fsum(np.abs(x.astype(np.float64) * y).tolist()),
    }
    ours = {"rr": linear.mse(y_hat, y) * n, "xr": linear.lesson_grad(x, y, y_hat) / 2, "xy": linear.dot64(x, y)}
    for key in exact:
        assert abs(ours[key] - exact[key]) <= 1e-11 * scale[key], key  # float64 rounding over 3e5 terms
    float32_running = float(np.cumsum((x * y).astype(np.float32), dtype=np.float32)[-1])
    assert abs(float32_running - exact["xy"]) > 1e-6 * scale["xy"]  # the size at which float32 visibly differs


# Other kernels than the one this machine picks: OpenBLAS's SSE3 baseline, NumPy without its AVX loops.
NO_AVX = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR AVX2 FMA3"
KERNELS = [{}, {"OPENBLAS_CORETYPE": "Prescott"}, {"NPY_DISABLE_CPU_FEATURES": NO_AVX}]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the kernels named are x86-64's")
def test_sums_over_the_data_do_not_depend_on_the_kernel_the_machine_picks():
    """The loss, both gradients, sum(xy) and sum(x^2) are bit-identical whichever BLAS or SIMD kernel runs (each in its
    own process).
    """
    results = set()
    for kernel in KERNELS:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")}
        done = subprocess.run(
            [sys.executable, PROGRAMS / "sums.py"],
            env=env | kernel | {"PYTHONPATH": str(REPO / "src")},
            capture_output=True,
            text=True,
            check=True,
        )
        results.add(done.stdout)
    assert len(results) == 1, results


def test_sums_do_not_go_through_blas(monkeypatch):
    """BLAS sums in an order that depends on its kernel and thread count; the math must not use it."""

    def no_blas(*args, **kwargs):
        raise AssertionError("BLAS dot called")

    x = np.linspace(-1, 1, 2 * linear.CHUNK + 5, dtype=np.float32)
    y_hat = linear.predict(np.float32(0.5), x)

    def sums():
        return (
            linear.mse(y_hat, 2 * x),
            linear.mse_grad(x, 2 * x, y_hat),
            linear.optimal_w(x, 2 * x),
            linear.lr_bound(x),
        )

    expected = sums()
    for name in ("dot", "vdot", "inner", "matmul", "vecdot"):
        monkeypatch.setattr(np, name, no_blas)
    assert sums() == expected


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


@settings(max_examples=200, deadline=None)
@given(problems())
def test_torch_variants_fused_loss_is_the_lessons_loss(problem):
    """The torch variant uses F.mse_loss for a leaner graph: same value and same autograd gradient as the lesson's
    loss.
    """
    w, x, y = problem
    x_t, y_t = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    grads, losses = [], []
    for loss_fn in (lessons_loss, mse_loss):
        w_t = torch.tensor(float(w), dtype=torch.float64, requires_grad=True)
        loss = loss_fn(linear.predict(w_t, x_t), y_t)
        loss.backward()
        losses.append(loss.item())
        grads.append(w_t.grad.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-12, abs=1e-300)
    scale = abs(grads[0]) + float(np.mean(np.abs(x.astype(np.float64) * (float(w) * x - y))))
    assert grads[1] == pytest.approx(grads[0], rel=1e-9, abs=1e-9 * scale + 1e-300)
