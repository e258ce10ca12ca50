"""How every stage and command ends: bad input is one line and exit 2, Ctrl-C and kill are one line
and exit 130 and 143, after the cleanup they set off (temporary files removed, a run marked KILLED).

    if __name__ == "__main__":
        run_command(main)
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

EXIT_BAD_INPUT = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Main = Callable[[Sequence[str] | None], int | None]


class InputError(Exception):
    """Bad input the user can fix (params, files, environment, a store); the message is one human sentence."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that the same cleanup runs on the way out."""


def _stop(signum: int, frame: object) -> None:
    """The handler of SIGINT and SIGTERM while a command runs: unwind the stack (`_unwind`)."""
    _unwind(signum)


def _unwind(signum: int) -> NoReturn:
    """Raise the stop, once: from now on both signals are ignored (an impatient user, a supervisor that
    signals twice), so the cleanup on the way out is not cut short."""
    for each in STOP_SIGNALS:
        if signal.getsignal(each) is not signal.SIG_IGN:
            signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


@contextlib.contextmanager
def signals_held() -> Iterator[Callable[[], None]]:
    """Hold Ctrl-C and kill while a run of calls that must each finish is made; yields `stop_if_asked`.

    For the calls to the MLflow store: interrupted inside its transaction, a sqlite store stays locked,
    and between the store's answer and the caller's next line a new run's id would be lost, so the run
    could not be marked KILLED. A stop that comes meanwhile is noted; it lands where the block calls
    `stop_if_asked()` (between two calls) or at the block's end. Nothing is held outside `run_main` (no
    handler of ours) or off the main thread (signals are handled there), nor in a nested block (the
    outer one holds).
    """
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    def stop_if_asked() -> None:
        if held:
            signum = held[0]
            held.clear()  # raised once: the block's end must not raise it again over the cleanup's notes
            _unwind(signum)

    on_main = threading.current_thread() is threading.main_thread()
    ours = [signum for signum in STOP_SIGNALS if on_main and signal.getsignal(signum) is _stop]
    for signum in ours:
        signal.signal(signum, hold)
    try:
        yield stop_if_asked
    finally:
        for signum in ours:
            if signal.getsignal(signum) is hold:  # not once the stop was raised (`_unwind` ignores both)
                signal.signal(signum, _stop)
        stop_if_asked()


def _redeliver_dropped_stop(
    other_hook: Callable[[sys.UnraisableHookArgs], object],
    redeliveries: list[threading.Timer],
    unraisable: sys.UnraisableHookArgs,
) -> None:
    """sys.unraisablehook while a command runs: bring back a stop that Python would drop.

    A signal that arrives while a finalizer or weakref callback runs (SQLAlchemy has many) raises
    there, where Python prints the exception and carries on as if never interrupted. The signal is
    sent again a moment later, when the callback has returned: raised from the hook it would be dropped
    again, and a real signal also cuts short a blocking call such as a sleep or a lock wait. Required by
    tests/unit/core/test_command.py's test_a_signal_that_arrives_in_a_finalizer_still_stops_the_command; stops held
    by `signals_held` are never raised in a finalizer.
    """
    if not isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
        other_hook(unraisable)
        return
    signum = signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM
    signal.signal(signum, _stop)  # `_unwind` ignored it, expecting to unwind
    again = threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum))
    again.daemon = True
    again.start()
    redeliveries.append(again)


def run_main(main: Main, argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run a command's `main` and return its exit code; bad input, Ctrl-C and kill become one line on stderr.

    What the cleanup did on the way out (the notes of the exception, such as "numpy run <id> marked
    KILLED") is part of that line. A signal the parent ignores (nohup) stays ignored, and the
    handlers are put back as they were, except when `exiting` (the process ends right after) and a
    stop came: then both stay ignored, so that a repeated signal cannot turn 130/143 into a death by
    signal.
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, _stop)
    redeliveries: list[threading.Timer] = []
    other_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_redeliver_dropped_stop, other_hook, redeliveries)
    stopped = False
    try:
        try:
            return main(argv) or 0
        finally:
            for again in redeliveries:
                again.join()  # a stop on its way back (10 ms at most) lands here, while our handlers are in place
    except InputError as err:
        print(f"gdpipe: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as err:  # where no reader knew the size (NumPy's message says what it asked for)
        what = str(err) or "MemoryError"
        print(f"gdpipe: error: out of memory ({what}): free memory or lower data.n_samples", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Terminated) as err:
        stopped = True
        name = "interrupted (SIGINT)" if isinstance(err, KeyboardInterrupt) else "terminated (SIGTERM)"
        notes = "".join(f"{note}; " for note in getattr(err, "__notes__", ()))
        print(f"gdpipe: {name}; {notes}no output was half-written", file=sys.stderr)
        return 128 + (signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM)
    finally:
        sys.unraisablehook = other_hook
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if stopped and exiting else handler)


def run_command(main: Main) -> NoReturn:
    """The `__main__` of every stage and command: `run_main(main)`, then exit with its code.

    Heavy imports go inside `main`, which keeps `--help` quick.
    """
    sys.exit(run_main(main, exiting=True))
