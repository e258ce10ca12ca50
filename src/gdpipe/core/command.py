"""How every stage and command ends: bad input is one line and exit 2, Ctrl-C and kill are one line
and exit 130 and 143, after the cleanup they set off (temporary files removed, a run marked KILLED).

    if __name__ == "__main__":
        run_command(main)
"""

from __future__ import annotations

import contextlib
import functools
import gc
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


# Signal handlers are process-wide, and so is what they need to know:
_held: list[int] | None = None  # the stops that arrived inside `signals_held()`, or None outside it
_redelivery: threading.Timer | None = None  # a stop dropped in a finalizer, on its way back


def _stop(signum: int, frame: object) -> None:
    """The handler of SIGINT and SIGTERM: unwind the stack, once.

    A second signal (an impatient user, a supervisor that signals twice) is ignored, so the
    cleanup on the way out is not cut short.
    """
    if _held is not None:
        _held.append(signum)
        return
    for each in STOP_SIGNALS:
        if signal.getsignal(each) is _stop:
            signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


def _stop_after_finalizer(
    other_hook: Callable[[sys.UnraisableHookArgs], object], unraisable: sys.UnraisableHookArgs
) -> None:
    """sys.unraisablehook while a command runs: bring back a stop that Python would drop.

    A signal that arrives while a finalizer or weakref callback runs (SQLAlchemy has many) raises
    there, where Python prints the exception and carries on as if never interrupted. Send the
    signal again from a moment later, when the callback has returned; a real signal also cuts
    short a blocking call such as a sleep or a lock wait.
    """
    global _redelivery
    if not isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
        other_hook(unraisable)
        return
    signum = signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM
    signal.signal(signum, _stop)  # _stop ignored it, expecting to unwind
    _redelivery = threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum))
    _redelivery.daemon = True
    _redelivery.start()


def _await_redelivery() -> None:
    """Wait for a stop on its way back (10 ms at most), so that it lands while our handlers are in place."""
    global _redelivery
    if _redelivery is not None:
        again, _redelivery = _redelivery, None
        again.join()  # the signal cuts the wait short and raises here


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and kill until the block is done, then stop as usual.

    For a call that must not stop half-way, such as one call to the MLflow store: interrupted
    inside its transaction, a sqlite store stays locked, and between the store's answer and the
    caller's next line a new run's id would be lost, so the run could not be marked KILLED.
    Keep such blocks short. It holds nothing outside `run_main` (no handler of ours) or off the
    main thread (signals are handled there).
    """
    global _held
    if _held is not None or threading.current_thread() is not threading.main_thread():
        yield  # nested: the outer block acts on what arrives
        return
    _held = []
    try:
        yield
    finally:
        held, _held = _held, None
        if held:
            _stop(held[0], None)


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
    other_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_stop_after_finalizer, other_hook)
    stopped = False
    try:
        try:
            return main(argv) or 0
        finally:
            _await_redelivery()
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

    The garbage collector stays on, so a reference cycle made per epoch is still freed, but runs
    less often than Python's default (every 50,000 new container objects, not every 700): a stage's
    heavy imports (torch, mlflow) would otherwise be walked again and again while they load, 0.4 s
    of the track stage (`make bench`). Before exit everything is frozen, so the interpreter's final
    collection has nothing to walk (0.45 s in track): cycles left at exit are not finalized, which
    a command that has written and closed its outputs does not need. Heavy imports go inside
    `main`, which keeps `--help` quick.
    """
    gc.set_threshold(50_000)
    code = run_main(main, exiting=True)
    gc.freeze()
    sys.exit(code)
