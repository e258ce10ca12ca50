"""train: full-batch gradient descent on f(x) = w * x with one variant, its outputs, and what to say when it diverges.

history = train("numpy", dataset, params.train)    # or "torch"; torch on several processes: train/torchrun.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset, History, TrainedModel, write_timing
from gdpipe.core.config import Params, TrainParams, Variant
from gdpipe.linear import lr_bound, mse, predict
from gdpipe.train.loop import Stepper, fit


def stepper_class(variant: Variant) -> type[Stepper]:
    """The variant's stepper; torch is imported only when it is asked for."""
    if variant == "numpy":
        from gdpipe.train.numpy_variant import NumpyStepper

        return NumpyStepper
    from gdpipe.train.torch_variant import TorchStepper

    return TorchStepper


def train(variant: Variant, data: Dataset, params: TrainParams) -> History:
    """Run gradient descent for `variant`; a divergence ends the history at its last finite epoch."""
    stepper = stepper_class(variant)(data, params)
    return fit(stepper, params.epochs, params.log_every, label=f"train {variant}")


def save(
    variant: Variant,
    history: History,
    params: Params,
    paths: tuple[str | Path, str | Path],
    started_ms: int,
    finished_ms: int,
    world_size: int = 1,
) -> None:
    """The train stage's outputs, each written atomically: the history, the model with the params that shaped it,
    then when and on how many processes it trained (for MLflow only: times stay out of DVC's outputs)."""
    history_path, model_path = paths
    history.write_csv(history_path)
    trained_with = config.values(params, config.training_keys(variant))
    TrainedModel.from_history(variant, history, trained_with).save(model_path)
    write_timing(history_path, started_ms, finished_ms, world_size)


def divergence_note(variant: Variant, diverged_at: int, data: Dataset, params: TrainParams, x_layout: str) -> str:
    """One line saying where training diverged and which learning rates are stable for this data."""
    with np.errstate(over="ignore", invalid="ignore"):
        first_loss = np.float32(
            mse(predict(np.float32(params.w_init), data.x), data.y)
        )  # float32, as both variants record it
    if not np.isfinite(first_loss):
        return (
            f"{variant} diverged at epoch 1: the loss at train.w_init = {params.w_init:g} is already beyond "
            "float32's range, "
            "whatever the learning rate; start nearer the data (a smaller |train.w_init|)."
        )
    gradient = params.numpy.gradient if variant == "numpy" else "mean"
    bound = lr_bound(data.x, gradient)
    note = (
        f"{variant} diverged at epoch {diverged_at}: w or loss is no longer finite. "
        f"Gradient descent on this data converges only for 0 < lr < {bound:.4g}"
        f"{' (the summed gradient is n times larger)' if gradient == 'sum' else ' (1/mean(x^2))'}; "
        f"train.lr = {params.lr:g}."
    )
    if x_layout == "grid" and data.x.size > 4:
        note += (
            " With the 1..n grid, mean(x^2) grows like n^2/3, so the bound shrinks like 3/n^2: "
            "use data.x_layout: uniform for large n."
        )
    return note
