"""The one error type for bad input, and the entry-point wrappers: exit 2 for bad input, 130 and 143
for Ctrl-C and kill, each with one line; and `signals_held` for calls that must not stop half-way."""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input the user can fix (params, files, environment); the message is one human sentence."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that cleanup (temporary files, run status) happens."""


_armed: set[int] = set()  # the signals run_main handles (one the parent ignores stays ignored)
_other_unraisables = [sys.__unraisablehook__]  # where unraisable exceptions that are not ours go


def _interrupt(signum, frame):
    # The first Ctrl-C or kill unwinds the stack; a second one (an impatient user, a supervisor that
    # signals twice) is ignored, so the cleanup on the way out (temporary files, the MLflow run's
    # status, the last line) is not cut short.
    for each in _armed:
        signal.signal(each, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _redeliver(unraisable) -> None:
    """sys.unraisablehook: bring back a Ctrl-C or kill that Python would drop.

    A signal that arrives while Python runs a finalizer or a weakref callback (SQLAlchemy's, for
    one) raises there, where an exception is printed and ignored: the command would go on as if
    never interrupted. Deliver the signal again in a moment, from another thread, so that it is
    handled after that callback has returned.
    """
    if isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
        signum = signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM
        for each in _armed:
            signal.signal(each, _interrupt)
        # A real signal to the main thread: it also cuts short a blocking call such as sleep or a lock wait.
        again = threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum))
        again.daemon = True
        again.start()
    else:
        _other_unraisables[0](unraisable)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and kill until the block is done, then act on them as usual.

    For calls that must not stop half-way, such as a write to the MLflow store: interrupted inside
    its database transaction, the store stays locked and the run could not be marked KILLED.
    Keep such blocks short; a long job is split into several.
    """
    if not _armed or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    saved = {signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in _armed}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if held and saved[held[0]] == _interrupt:
            _interrupt(held[0], None)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's main; bad input becomes one line on stderr and exit code 2, never a traceback.

    SIGINT and SIGTERM unwind the stack (so atomic writes remove their temporary files and a run
    being published is marked KILLED) and end the command with one line and the shell's usual
    codes, 130 and 143. What the cleanup did (notes on the exception) is part of that line.
    """
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _other_unraisables[0] = sys.unraisablehook
    _armed.update(signum for signum, handler in previous.items() if handler != signal.SIG_IGN)
    for signum in _armed:
        signal.signal(signum, _interrupt)
    sys.unraisablehook = _redeliver
    try:
        return main(argv) or 0
    except InputError as err:
        print(f"gdpipe: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        print(f"gdpipe: interrupted (SIGINT); {_notes(err)}no output was half-written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as err:
        print(f"gdpipe: terminated (SIGTERM); {_notes(err)}no output was half-written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        sys.unraisablehook = _other_unraisables[0]
        for signum in _armed:
            # Still ignored only if a real Ctrl-C or kill came: the process is on its way out, and a
            # repeated signal must not turn exit code 130/143 into a death by signal.
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, previous[signum])
        _armed.clear()


def run_command(main: Callable[[Sequence[str] | None], int | None]) -> NoReturn:
    """The `__main__` of every stage and command: `run_main(main)`, then exit with its code.

    A command is a short-lived process whose objects, mostly the modules it imports (mlflow and
    torch bring about a million), live until it exits. Python's cyclic garbage collector would walk
    them again and again while they load and once more at exit: about a second of a `dvc repro`
    (`make bench`, pipeline). So it is off while the command runs (what a command repeats makes few
    reference cycles: none per training epoch, about 40 objects per batch of metrics published;
    `make bench` checks the memory of training) and everything is frozen before exit, so the
    interpreter's final collection has nothing to walk. Heavy imports therefore go
    inside `main`, which also keeps `--help` and bad arguments quick.
    """
    gc.disable()
    code = run_main(main)
    gc.freeze()
    sys.exit(code)


def _notes(err: BaseException) -> str:
    return "".join(f"{note}; " for note in getattr(err, "__notes__", ()))
