"""Progress bars for long runs: on stderr when it is a terminal, nothing at all otherwise.

Under DVC in a terminal the bar shows; in CI, a pipe or a log file nothing is written, so
outputs and logs stay clean. tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from typing import Protocol


class Bar(Protocol):
    """What callers use of a progress bar."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


class _Silent:
    """The bar when stderr is not a terminal: does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str) -> Bar:
    """A bar counting to `total` on stderr if it is a terminal; shown only after a second, so short runs stay quiet."""
    if not sys.stderr.isatty():
        return _Silent()
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, delay=1.0, mininterval=0.5, dynamic_ncols=True
    )
