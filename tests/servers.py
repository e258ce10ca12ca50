"""Servers the tests start, stopped afterwards and also when the test process is killed: a watchdog per server,
and `make serve` or `make ui` running in a copy of the project."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from support import REPO, child_env, free_port, wait_for_server

# The watchdog of `undone_if_this_process_dies`: one byte means the block ended and nothing is left to do;
# end of file means the test process is gone (even by kill -9), so it runs its command.
WATCHDOG = "import os, subprocess, sys\nif os.read(0, 1) == b'':\n    subprocess.run(sys.argv[1:], timeout=120)\n"


@contextlib.contextmanager
def undone_if_this_process_dies(command: list[str], cwd: Path = REPO) -> Iterator[None]:
    """Run `command` (it stops a server) if this test process ends in the block, however: a test killed half-way
    leaves no server behind. A watchdog in a session of its own (a signal to the test's group passes it by)
    waits on a pipe whose other end only this process holds, and the kernel closes that end when it dies."""
    read, write = os.pipe()  # not inherited by the servers this process starts: only the watchdog holds `read`
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, *command],
        stdin=read,
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(read)
    try:
        yield
    finally:
        os.write(write, b"x")
        os.close(write)
        watchdog.wait(timeout=30)


def killed_if_this_process_dies(process: subprocess.Popen) -> contextlib.AbstractContextManager[None]:
    """The same for a process: killed, with its whole group if it leads one (a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(process.pid) == process.pid:
            return undone_if_this_process_dies(["kill", "-KILL", "--", f"-{process.pid}"])
    return undone_if_this_process_dies(["kill", "-KILL", str(process.pid)])


@contextlib.contextmanager
def served(repo: Path, target: str, port_setting: str) -> Iterator[str]:
    """`make <target> <port_setting>=<a free port>` running in a copy of the project, once it answers
    /health: its URL. The server and everything it started are stopped afterwards."""
    port = free_port()
    log = repo.parent / f"{target}.log"
    with log.open("w") as out:
        command = ["make", "-o", ".venv/.installed", target, f"{port_setting}={port}"]
        server = subprocess.Popen(
            command, cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )
    try:
        with killed_if_this_process_dies(server):
            url = f"http://127.0.0.1:{port}"
            wait_for_server(url, server, log)
            yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
