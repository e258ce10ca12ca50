"""Train one variant: pick its stepper, run the shared loop, explain a divergence."""

from __future__ import annotations

from collections.abc import Callable

from gdpipe.config import TrainParams, Variant
from gdpipe.data import Dataset
from gdpipe.history import History
from gdpipe.linear import lr_bound


def trainer_for(variant: Variant) -> Callable[[Dataset, TrainParams], History]:
    """The `train` function of a variant; torch is imported only when it is asked for."""
    if variant == "numpy":
        from gdpipe.numpy_trainer import train
    else:
        from gdpipe.torch_trainer import train  # type: ignore[no-redef]
    return train


def train(variant: Variant, data: Dataset, params: TrainParams) -> History:
    """Run gradient descent for `variant`."""
    return trainer_for(variant)(data, params)


def divergence_note(variant: Variant, history: History, data: Dataset, params: TrainParams, x_layout: str) -> str:
    """One line saying where training diverged and which learning rates are stable for this data."""
    gradient = params.numpy.gradient if variant == "numpy" else "mean"
    bound = lr_bound(data.x, gradient)
    note = (
        f"{variant} diverged at epoch {history.diverged_at}: w or loss is no longer finite. "
        f"Gradient descent on this data converges only for 0 < lr < {bound:.4g}"
        f"{' (the summed gradient is n times larger)' if gradient == 'sum' else ' (1/mean(x^2))'}; train.lr = {params.lr:g}."
    )
    if x_layout == "grid" and data.x.size > 4:
        note += " With the 1..n grid, mean(x^2) grows like n^2/3, so the bound shrinks like 3/n^2: use data.x_layout: uniform for large n."
    return note
