"""The one error type for bad input, and the entry-point wrapper that turns it into exit code 2."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input the user can fix (params, files, environment); the message is one human sentence."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that cleanup (temporary files, run status) happens."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's main; bad input becomes one line on stderr and exit code 2, never a traceback.

    SIGINT and SIGTERM unwind the stack (so atomic writes remove their temporary files) and end
    the command with one line and the shell's usual codes, 130 and 143.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return main(argv) or 0
    except InputError as err:
        print(f"gdpipe: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gdpipe: interrupted (SIGINT); no output was half-written", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("gdpipe: terminated (SIGTERM); no output was half-written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
