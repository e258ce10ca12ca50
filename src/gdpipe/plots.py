"""Loss and w per epoch of every variant, overlaid, as a PNG that needs no browser or network."""

from __future__ import annotations

import io
from collections.abc import Mapping

from gdpipe.history import History

COLORS = {"numpy": "tab:blue", "torch": "tab:orange"}


def draw_curves(histories: Mapping[str, History], w_star: float | None = None) -> bytes:
    """Two panels, loss (log scale) and w, one line per variant, as PNG bytes: equal histories give equal bytes."""
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
