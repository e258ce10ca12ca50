"""The evaluate stage's work: the metrics of the trained variants (f(x), its error, the distance to
the closed-form optimum, the parity of the two) and a picture of their curves."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from gdpipe.core.artifacts import Dataset, History, TrainedModel
from gdpipe.core.config import Params
from gdpipe.linear import optimal_w, predict

COLORS = {"numpy": "tab:blue", "torch": "tab:orange"}


def evaluate(
    data: Dataset, models: Mapping[str, TrainedModel], histories: Mapping[str, History], params: Params
) -> dict:
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


def draw_curves(histories: Mapping[str, History], w_star: float | None = None) -> bytes:
    """Loss (log scale) and w per epoch, one line per variant, as PNG bytes that need no browser.

    Equal histories give equal bytes.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    # A fixed layout and plain 1e-05 tick labels: a constrained layout and mathtext labels would
    # cost more time than the rest of the stage.
    figure = Figure(figsize=(9, 3.6), dpi=100)
    figure.subplots_adjust(left=0.095, right=0.985, bottom=0.14, top=0.91, wspace=0.22)
    loss_axes, w_axes = figure.subplots(1, 2)
    for variant, history in histories.items():
        style = {"color": COLORS.get(variant), "label": variant, "linewidth": 1.6}
        # numpy first and solid, torch dashed on top: identical curves stay visibly two.
        if variant == "torch":
            style |= {"linestyle": "--"}
        positive = history.loss > 0
        loss_axes.plot(history.epoch[positive], history.loss[positive], **style)
        w_axes.plot(history.epoch, history.w, **style)
    if w_star is not None:
        w_axes.axhline(w_star, color="grey", linewidth=0.8, linestyle=":", label="w* (closed form)")
    loss_axes.set(title="MSE loss per epoch", xlabel="epoch", ylabel="loss", yscale="log")
    loss_axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    w_axes.set(title="w per epoch", xlabel="epoch", ylabel="w")
    for axes in (loss_axes, w_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    png = io.BytesIO()
    # No "Software" stamp and no date: equal histories give byte-identical files.
    figure.savefig(png, format="png", metadata={"Software": None})
    return png.getvalue()
