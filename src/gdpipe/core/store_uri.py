"""MLFLOW_TRACKING_URI as the environment gives it: checked before any stage runs, and named without secrets.

No MLflow here (the config check that `make repro` runs first must stay quick), and nothing that can
raise on a string: a URI that Python's `urlsplit` refuses (a typo in the port, an unclosed `[`) still
holds a password, and the line that says so must not print it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

VARIABLE = "MLFLOW_TRACKING_URI"
# How a user name or password writes the characters that would end it early, or be read as its end.
ENCODED = "'/' '?' '#' '@' ':' as %2F %3F %23 %40 %3A"


def redact(uri: str) -> str:
    """The URI without its user name and password (or token), fit to print or record; never raises."""
    scheme, userinfo, rest = _split(uri)
    return uri if userinfo is None else f"{scheme}://{rest}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite store (sqlite:///<path>); None for a server or any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def credentials(uri: str) -> tuple[str, str]:
    """The user name and password written in the URI, as written ('' when none)."""
    _, userinfo, _ = _split(uri)
    user, _, password = (userinfo or "").partition(":")
    return user, password


def _split(uri: str) -> tuple[str, str | None, str]:
    """(scheme, credentials or None, what follows them), read as text.

    Not with `urlsplit`, which raises on a bad port or bracket. The credentials are what comes between
    `://` and the `@` that ends them; a URI without an authority (`sqlite:////path`) has none. A `/`, `?`
    or `#` in a password that was not percent-encoded ends the authority early, and an `@` after it shows
    it: then everything up to the last `@` is taken for credentials (the host kept, the path perhaps not:
    an `@` in a network URI's path is rare).
    """
    scheme, separator, rest = uri.partition("://")
    if not separator or "@" not in rest:
        return scheme, None, rest
    end = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    if end == 0:  # no authority (sqlite:////path, file:///path): an '@' is part of a path
        return scheme, None, rest
    cut = rest.rfind("@") if "@" in rest[end:] else rest.rfind("@", 0, end)
    return scheme, rest[:cut], rest[cut + 1 :]


def check(uri: str | None) -> None:
    """Raise ValueError with one line, no secret in it, if `uri` (MLFLOW_TRACKING_URI) cannot be parsed.

    MLflow parses it with urllib too, and fails with a traceback that prints it whole, password and all.
    """
    if not uri:
        return
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (parsed only when read)
    except ValueError as err:
        raise ValueError(f"{VARIABLE}={_shown(uri)} cannot be parsed: {_why(uri, err)}") from None


def check_environment() -> None:
    """`check` of MLFLOW_TRACKING_URI, as the environment holds it."""
    check(os.environ.get(VARIABLE))


def _why(uri: str, err: ValueError) -> str:
    """What is wrong, in words of our own: Python's message repeats the port, which may be part of a password."""
    message = str(err)
    if "IPv6" in message:
        what = "an IPv6 address must be one bracketed host, as in http://[::1]:5002 (a '[' or ']' is unmatched)"
    elif "out of range" in message:
        what = "its port is out of range (0 to 65535)"
    elif "Port" in message:
        what = "its port is not a number (host:port, as in http://127.0.0.1:5002)"
    else:
        what = "it is not a URL urllib can read"
    hint = f"; in a user name or password write {ENCODED}" if "@" in uri else ""
    return f"{what}{hint}; fix it, or unset it for the project's own store (mlruns/)"


def _shown(uri: str) -> str:
    """The redacted URI, on one line and cut to a readable length, and whether credentials were removed."""
    kept = redact(uri)
    shown = kept if kept.isprintable() else repr(kept)
    shown = shown if len(shown) <= 200 else f"{shown[:197]}..."
    return f"{shown} (credentials not shown)" if kept != uri else shown
