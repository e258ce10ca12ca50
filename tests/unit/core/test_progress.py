"""Progress bars (tqdm with disable=None): drawn on stderr when it is a terminal, nothing at all otherwise."""

from __future__ import annotations

import io
import sys

from gdpipe.core import progress
from gdpipe.core.config import VARIANTS
from gdpipe.data import generate
from gdpipe.train import train


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_silent_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress.bar(10, "train numpy", "epoch")
    bar.update(10)
    bar.close()
    assert sys.stderr.getvalue() == ""


def test_bar_is_drawn_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress.bar(10, "train numpy", "epoch")
    bar.refresh()  # a real bar waits a second before it first draws; force it
    bar.update(10)
    bar.close()
    assert "train numpy" in sys.stderr.getvalue()


def test_long_training_writes_nothing_to_a_non_terminal_stderr(params, capfd):
    p = params({"train.epochs": 3000})
    for variant in VARIANTS:
        train(variant, generate(p.data), p.train)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
