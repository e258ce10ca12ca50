"""Metrics of the trained variants: f(x), its error, distance to the closed-form optimum, parity."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gdpipe.config import Params
from gdpipe.data import Dataset
from gdpipe.history import History
from gdpipe.linear import optimal_w, predict
from gdpipe.model import TrainedModel


def evaluate(data: Dataset, models: Mapping[str, TrainedModel], histories: Mapping[str, History], params: Params) -> dict:
    """The content of metrics.json: one section per variant, the optimum, and the parity between variants.

    A diverged variant gets `diverged: true` and no numbers: NaN or infinity are never reported as results.
    """
    x = params.evaluate.x
    w_star = optimal_w(data.x, data.y)
    true_value = predict(params.data.true_w, x)
    metrics: dict = {}
    for variant, model in models.items():
        history = histories[variant]
        section: dict = {"diverged": model.diverged, "epochs_trained": model.epochs_trained}
        if model.diverged:
            section["diverged_at_epoch"] = model.diverged_at_epoch
        else:
            prediction = predict(model.w, x)
            section |= {
                "w": model.w,
                "loss": float(history.loss[-1]),
                "prediction": prediction,
                "abs_error": abs(prediction - true_value),
                "w_star_distance": abs(model.w - w_star),
            }
        metrics[variant] = section
    metrics["optimum"] = {"w_star": w_star, "prediction": predict(w_star, x), "true_value": true_value, "x": x}
    metrics["parity"] = {"max_abs_w_diff": max_abs_w_diff(histories["numpy"], histories["torch"])}
    return metrics


def max_abs_w_diff(a: History, b: History) -> float | None:
    """Largest |w_a - w_b| over the epochs both histories recorded (None if they share none)."""
    _, in_a, in_b = np.intersect1d(a.epoch, b.epoch, assume_unique=True, return_indices=True)
    return float(np.max(np.abs(a.w[in_a] - b.w[in_b]))) if in_a.size else None
