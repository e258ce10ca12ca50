"""kernel: the per-epoch time of each training step / one np.dot(x, y) over the same float32 arrays.

gdpipe's trainers (numpy, torch) as the train stage calls them, and the lesson's loops as written
(tutorial-numpy, tutorial-torch). Each variant and size runs in its own process:

    python bench/kernel.py VARIANT N REPEATS    # prints that process's results as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import Row, say, summarize
from support import child_env

VARIANTS = ("numpy", "torch", "tutorial-numpy", "tutorial-torch")
GOALS = {"kernel numpy N=1e7": ("<=", 3.0), "kernel torch N=1e7": ("<=", 10.0)}


def run(quick: bool, work: Path) -> dict:
    """{variant: {N: summary}}, every variant and size measured in a fresh process."""
    sizes = [10**5, 10**6] if quick else [10**5, 10**6, 10**7]
    repeats = 3 if quick else 7
    out: dict = {}
    for variant in VARIANTS:
        say(f"kernel: {variant}")
        for n in sizes:
            # One process per size too: like the train stage, torch settles its allocator for the data it meets first.
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), variant, str(n), str(repeats)],
                capture_output=True,
                text=True,
                env=child_env(),
                check=True,
            )
            out.setdefault(variant, {}).update(json.loads(done.stdout))
    return out


def measure(variant: str, sizes: list[int], repeats: int) -> dict:
    """In a fresh process (so one variant's process settings cannot help another): per-epoch ratios."""
    import numpy as np

    from gdpipe.core import config
    from gdpipe.data import generate

    results = {}
    for n in sizes:
        dataset = generate(
            config.DataParams(
                n_samples=n, true_w=2.0, noise_std=0.1, seed=0, x_layout="uniform", x_low=-1.0, x_high=1.0
            )
        )
        x, y = dataset.x, dataset.y
        epochs = max(3, min(200, int(3e7 // n)))
        run = _epochs_runner(variant, dataset, epochs)
        run()  # warm-up: first-touch page faults, lazy initialisation
        ratios = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(epochs):
                np.dot(x, y)
            floor = time.perf_counter() - start
            start = time.perf_counter()
            run()
            ratios.append((time.perf_counter() - start) / floor)
        results[str(n)] = summarize(ratios) | {"epochs_per_repeat": epochs}
    return results


def _epochs_runner(variant: str, dataset, epochs: int):
    """A function that runs `epochs` epochs of one variant on `dataset`."""
    import numpy as np

    lr = 0.1
    if variant in ("numpy", "torch"):
        from gdpipe import train
        from gdpipe.core import config
        from support import load_default_params, with_overrides

        # The repository's train section (one process on the CPU, the mean gradient), this lr and these epochs.
        document = with_overrides(load_default_params(), {"train.lr": lr, "train.epochs": epochs, "train.w_init": 0.0})
        params = config.Params.model_validate(document).train
        train.stepper_class(variant)  # imports torch, as the train stage does before its clock starts
        return lambda: train.train(variant, dataset, params)
    if variant == "tutorial-numpy":
        # The lesson's NumPy cell, with its gradient made the mean (its sum diverges at large N).
        x, y = dataset.x, dataset.y

        def run():
            w = 0.0
            for _ in range(epochs):
                y_pred = w * x
                ((y_pred - y) ** 2).mean()  # the loss, computed as the lesson does and unused
                dw = np.dot(2 * x, y_pred - y).mean() / x.size
                w -= lr * dw

        return run
    import torch

    x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)

    def run():  # the lesson's torch cell
        w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)
        for _ in range(epochs):
            y_pred = w * x
            loss = ((y_pred - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
            w.grad.zero_()

    return run


def rows(result: dict) -> list[Row]:
    """One row per variant and size."""
    table = []
    for variant, sizes in result.items():
        for n, summary in sizes.items():
            label = f"kernel {variant} N=1e{len(n) - 1}"
            table.append((label, summary, GOALS.get(label)))
    return table


if __name__ == "__main__":
    variant, n, repeats = sys.argv[1:]
    print(json.dumps(measure(variant, [int(n)], int(repeats))))
