"""The one error type for bad input, and the entry-point wrapper that turns it into exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input the user can fix (params, files, environment); the message is one human sentence."""


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's main; bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        return main(argv) or 0
    except InputError as err:
        print(f"gdpipe: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
