"""Progress bars for long runs: tqdm on stderr when it is a terminal, nothing at all otherwise."""

from __future__ import annotations

from tqdm import tqdm


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar counting to `total`, drawn only on a terminal (disable=None) and only after a second, so short runs and
    CI logs stay quiet."""
    return tqdm(
        total=total, desc=desc, unit=unit, disable=None, leave=False, delay=1.0, mininterval=0.5, dynamic_ncols=True
    )
