"""One `dvc repro` of make's at a time in a clone: make repro, check and promote wait for their turn.

    python -m gdpipe.clone_lock --wait 600 -- .venv/bin/dvc repro

DVC holds a lock on the repository while it runs and refuses a second `dvc repro` at once with four lines
about a lock. Two make commands in one clone (a `make promote` while another runs) instead take turns on
LOCK: the second says in one line that it waits, then runs, or after `--wait` seconds stops in one line.
The lock is the open file's (flock), so a command that dies, even by kill -9, leaves none behind; the
command runs in this process (exec), which keeps the lock until it ends.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

from gdpipe.core.command import InputError, run_command
from gdpipe.core.wait import wait_until

LOCK = Path(".dvc/tmp/gdpipe-repro.lock")  # DVC's own temporary folder, which git ignores
POLL_S = 0.2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the other one, at most")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run with the lock held")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK.open("a")
    if not _take(handle):
        print(
            f"gdpipe: another make repro, check or promote runs dvc repro in this clone; waiting for it "
            f"(at most {args.wait:g} s)",
            file=sys.stderr,
            flush=True,
        )
        if not wait_until(lambda: _take(handle), args.wait, POLL_S):
            raise InputError(
                f"another make repro, check or promote still runs dvc repro in this clone after {args.wait:g} s "
                f"(it holds {LOCK}): let it finish or stop it, then run this again"
            )
    os.set_inheritable(handle.fileno(), True)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        raise InputError(f"cannot run {command[0]}: {err.strerror}") from None


def _take(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


if __name__ == "__main__":
    run_command(main)
