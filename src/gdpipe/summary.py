"""Print metrics.json as the lesson's answer: f(x) per variant, beside the closed-form optimum.

python -m gdpipe.summary metrics.json
"""

from __future__ import annotations

import sys

from gdpipe.core.command import InputError, run_command
from gdpipe.core.config import VARIANTS
from gdpipe.core.files import read_json


def format_summary(metrics: dict) -> str:
    """A small fixed-width table: one row per variant, then the optimum and the parity."""
    optimum = metrics["optimum"]
    x = optimum["x"]
    lines = [f"{'variant':<8} {'w':>10} {'final loss':>12} {f'f({x:g})':>10} {'|error|':>10}"]
    for variant in VARIANTS:
        section = metrics[variant]
        if section["diverged"]:
            lines.append(f"{variant:<8} diverged at epoch {section['diverged_at_epoch']}")
        else:
            lines.append(
                f"{variant:<8} {section['w']:>10.6f} {section['loss']:>12.3e} "
                f"{section['prediction']:>10.3f} {section['abs_error']:>10.2e}"
            )
    lines.append(
        f"{'optimum':<8} {optimum['w_star']:>10.6f} {'':>12} {optimum['prediction']:>10.3f}   "
        "(closed form w* = sum(xy)/sum(x^2))"
    )
    parity = metrics["parity"]["max_abs_w_diff"]
    lines.append(f"parity: max |w_numpy - w_torch| over all epochs = {'n/a' if parity is None else f'{parity:.3g}'}")
    return "\n".join(lines)


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    path = args[0] if args else "metrics.json"
    metrics = read_json(path)
    try:
        print(format_summary(metrics))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a metrics file written by the evaluate stage ({err!r})") from None


if __name__ == "__main__":
    run_command(main)
