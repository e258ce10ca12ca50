"""Waiting for something another process does: ask, sleep, ask again, until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, interval: float) -> T:
    """`condition()`'s first true value, asked every `interval` seconds; its last (false) value once `timeout` seconds
    have passed. Asked at least once; what it raises goes to the caller, which also says what timed out."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(interval)  # a Python sleep: Ctrl-C cuts it short
    return result
