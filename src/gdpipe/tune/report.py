"""What make tune shows of a study: a line per finished trial, the closing table, and the picture of the
objective against the learning rate."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

LOSS_FLOOR = 1e-20  # a loss of exactly 0 (w landed on w* in float32) is drawn here, on a log axis


def trial_line(number: int, lr: float, loss: float, experiment: str) -> str:
    """One finished trial, as make tune prints it."""
    return f"trial {number:>3}: lr {lr:.6g}  loss {_loss(loss)}  (dvc experiment {experiment})"


def table(best_number: int, best_lr: float, best_loss: float, closed_form: float, trials: int) -> str:
    """The closing table: the best trial against the closed form 1/(2 mean(x^2))."""
    off = (best_lr - closed_form) / closed_form
    return "\n".join(
        [
            f"{'':<12}{'trial':>6}  {'lr':>10}  {'loss':>10}",
            f"{'best':<12}{best_number:>6}  {best_lr:>10.6g}  {_loss(best_loss):>10}   of {trials} trials",
            f"{'closed form':<12}{'':>6}  {closed_form:>10.6g}  {'':>10}   1/(2 mean(x^2)): one step to w*",
            f"best lr - closed form: {off:+.2%}",
        ]
    )


def _loss(loss: float) -> str:
    return "diverged" if math.isinf(loss) else f"{loss:.4g}"


def draw(lrs: Sequence[float], losses: Sequence[float], closed_form: float, study: str) -> bytes:
    """PNG: each trial's loss against its learning rate (log-log), diverged trials on top, the closed form dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [(lr, max(loss, LOSS_FLOOR)) for lr, loss in zip(lrs, losses, strict=True) if not math.isinf(loss)]
    diverged = [lr for lr, loss in zip(lrs, losses, strict=True) if math.isinf(loss)]
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if finite:
        axes.scatter(*zip(*finite, strict=True), s=18, color="tab:blue", label="trial: loss after its epochs")
    top = max((loss for _, loss in finite), default=1.0) * 10
    if diverged:
        axes.scatter(diverged, [top] * len(diverged), marker="x", color="tab:red", label="diverged")
    axes.axvline(closed_form, linestyle="--", color="gray", label=f"closed form 1/(2 mean(x²)) = {closed_form:.4g}")
    axes.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="loss (larger of the two variants)")
    axes.set_title(f"make tune: study {study}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return out.getvalue()
