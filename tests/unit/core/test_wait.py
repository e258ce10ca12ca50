"""wait_until: the one poll loop (clone_lock, the sqlite store's lock, the team server's start and stop)."""

from __future__ import annotations

import pytest

from gdpipe.core.wait import wait_until


def answers(*values):
    """A condition that returns `values` one per call, and counts the calls."""
    calls = []

    def condition():
        calls.append(1)
        return values[len(calls) - 1]

    return condition, calls


def test_it_returns_the_first_true_value_and_asks_no_more():
    condition, calls = answers(None, 0, "ready", "never asked")
    assert wait_until(condition, timeout=60, interval=0) == "ready"
    assert len(calls) == 3


def test_with_no_time_left_it_asks_once_and_returns_the_false_value():
    condition, calls = answers(False, True)
    assert wait_until(condition, timeout=0, interval=60) is False
    assert len(calls) == 1


def test_what_the_condition_raises_reaches_the_caller():
    def stopped():
        raise RuntimeError("the server stopped at start")

    with pytest.raises(RuntimeError, match="stopped at start"):
        wait_until(stopped, timeout=60, interval=0)
