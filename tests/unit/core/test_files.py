"""Atomic writes: a failed, interrupted or killed writer leaves the old file, and no leftover for long."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from gdpipe.core.files import atomic_write, write_json
from support import PROGRAMS, REPO, files_under, src_env


def test_a_failed_or_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    for error in (OSError("No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_write(target) as handle:
            handle.write("new, half of it")
            raise error
        assert target.read_text() == "old\n" and files_under(tmp_path) == [target]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_removes_its_leftover(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    writer = subprocess.Popen(
        [sys.executable, PROGRAMS / "killed_writer.py", str(target)], stdout=subprocess.PIPE, text=True, env=src_env()
    )
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    assert target.read_text() == "old\n"
    (leftover,) = (path for path in files_under(tmp_path) if path != target)  # SIGKILL leaves no chance to clean up
    assert leftover.name.startswith(f".metrics.json.{writer.pid}.")
    ignored = subprocess.run(["git", "check-ignore", "-q", f"history/{leftover.name}"], cwd=REPO)
    assert ignored.returncode == 0, "git would show a killed writer's temporary file"
    live = tmp_path / f".metrics.json.{os.getpid()}.abc.tmp"  # a writer that is still running keeps its file
    live.write_text("busy")
    write_json(target, {"w": 2.0})
    assert json.loads(target.read_text()) == {"w": 2.0}
    assert files_under(tmp_path) == sorted([target, live])
