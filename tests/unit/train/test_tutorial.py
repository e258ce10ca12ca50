"""Fidelity: gdpipe reproduces the tables the lesson's notebook printed (its NumPy cells at 10 and 20
epochs, its torch cells at 20 and 100; the code as written is bench/tutorial.py), copied here as printed."""

from __future__ import annotations

import numpy as np
import pytest

from gdpipe.data import generate
from gdpipe.linear import predict
from gdpipe.train import train

# (epoch, w, loss, f(5)) exactly as the lesson printed them, with its final "after training" f(5).
NUMPY_10 = [
    (1, "1.200", 30.00000000, "6.000"),
    (2, "1.680", 4.79999924, "8.400"),
    (3, "1.872", 0.76800019, "9.360"),
    (4, "1.949", 0.12288000, "9.744"),
    (5, "1.980", 0.01966083, "9.898"),
    (6, "1.992", 0.00314570, "9.959"),
    (7, "1.997", 0.00050332, "9.984"),
    (8, "1.999", 0.00008053, "9.993"),
    (9, "1.999", 0.00001288, "9.997"),
    (10, "2.000", 0.00000206, "9.999"),
]
NUMPY_20 = [
    (1, "1.200", 30.00000000, "6.000"),
    (3, "1.872", 0.76800019, "9.360"),
    (5, "1.980", 0.01966083, "9.898"),
    (7, "1.997", 0.00050332, "9.984"),
    (9, "1.999", 0.00001288, "9.997"),
    (11, "2.000", 0.00000033, "10.000"),
    (13, "2.000", 0.00000001, "10.000"),
    (15, "2.000", 0.00000000, "10.000"),
    (17, "2.000", 0.00000000, "10.000"),
    (19, "2.000", 0.00000000, "10.000"),
]
TORCH_20 = [
    (1, "0.300", 30.00000000, "1.500"),
    (3, "0.772", 15.66018772, "3.859"),
    (5, "1.113", 8.17471695, "5.563"),
    (7, "1.359", 4.26725292, "6.794"),
    (9, "1.537", 2.22753215, "7.684"),
    (11, "1.665", 1.16278565, "8.327"),
    (13, "1.758", 0.60698116, "8.791"),
    (15, "1.825", 0.31684780, "9.126"),
    (17, "1.874", 0.16539653, "9.369"),
    (19, "1.909", 0.08633806, "9.544"),
]
TORCH_100 = [
    (1, "0.300", 30.00000000, "1.500"),
    (11, "1.665", 1.16278565, "8.327"),
    (21, "1.934", 0.04506890, "9.671"),
    (31, "1.987", 0.00174685, "9.935"),
    (41, "1.997", 0.00006770, "9.987"),
    (51, "1.999", 0.00000262, "9.997"),
    (61, "2.000", 0.00000010, "10.000"),
    (71, "2.000", 0.00000000, "10.000"),
    (81, "2.000", 0.00000000, "10.000"),
    (91, "2.000", 0.00000000, "10.000"),
]


@pytest.mark.parametrize(
    ("variant", "epochs", "table", "final_f5"),
    [
        ("numpy", 10, NUMPY_10, "9.999"),
        ("numpy", 20, NUMPY_20, "10.000"),
        ("torch", 20, TORCH_20, "9.612"),
        ("torch", 100, TORCH_100, "10.000"),
    ],
)
def test_history_matches_the_lessons_printed_table(params, variant, epochs, table, final_f5):
    # The lesson's NumPy cells use its original summed gradient; its torch cells use autograd.
    p = params({"train.epochs": epochs, "train.numpy.gradient": "sum"})
    history = train(variant, generate(p.data), p.train)
    assert history.epoch.tolist() == list(range(1, epochs + 1))
    for epoch, w, loss, f5 in table:
        row = epoch - 1
        assert f"{history.w[row]:.3f}" == w, f"w at epoch {epoch}"
        assert f"{predict(np.float32(history.w[row]), np.float32(5)):.3f}" == f5, f"f(5) at epoch {epoch}"
        # The lesson ran NumPy 1.x, whose type promotion differs in the last digits.
        assert history.loss[row] == pytest.approx(loss, rel=1e-4, abs=1e-7), f"loss at epoch {epoch}"
    assert f"{predict(np.float32(history.w[-1]), np.float32(5)):.3f}" == final_f5


def test_lessons_data_is_the_default(params):
    generated = generate(params().data)
    assert generated.x.tolist() == [1, 2, 3, 4] and generated.y.tolist() == [2, 4, 6, 8]
    assert generated.x.dtype == generated.y.dtype == np.float32


def test_the_lessons_summed_gradient_is_n_times_the_mean_one(params):
    """One step from w = 0: the lesson's sum moves w to 1.2, the true MSE gradient to 0.3 (= 1.2 / 4)."""
    first_w = {
        gradient: train(
            "numpy", generate(params().data), params({"train.epochs": 1, "train.numpy.gradient": gradient}).train
        ).w[0]
        for gradient in ("sum", "mean")
    }
    assert first_w["sum"] == pytest.approx(1.2, rel=1e-6)
    assert first_w["mean"] == pytest.approx(0.3, rel=1e-6)
