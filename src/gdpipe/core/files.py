"""Atomic file output and JSON input: every output is complete or absent, every bad input is one line."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gdpipe.core.command import InputError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file next to `path`, then rename it over `path`.

    A crash, a signal or an exception at any moment leaves either the old file or the new one,
    never half of one; the temporary file is removed on failure, or, when the writer was killed
    (SIGKILL), by the next write of the same file. A full disk or a folder that cannot be written
    is an InputError naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        # The writer's pid is in the name, so a later write can tell a killed writer's file from a live one's.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:
        with open(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.errno in _UNWRITABLE:
            raise _cannot_write(path, err) from None
        raise


# Why a file cannot be written that the user can fix: a full disk or quota, a read-only or forbidden folder.
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _cannot_write(path: Path, err: OSError) -> InputError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(f"{path}: cannot write it, the disk is full ({err.strerror}): free some space and run again")
    return InputError(f"{path}: cannot write it ({err.strerror}): check the permissions of {path.parent}")


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files of `path` whose writer is gone: SIGKILL leaves no chance to clean up."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = orphan.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                orphan.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def write_bytes(path: str | Path, content: bytes) -> None:
    """Write `content` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(content)


def write_json(path: str | Path, document: Any) -> None:
    """Write JSON atomically; refuse NaN and infinity, which are not results (and not JSON)."""
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with atomic_write(path) as handle:
        handle.write(text)


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by an earlier stage; InputError naming the file if it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (run the stage that writes it: dvc repro)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number gdpipe accepts")


def require_finite(path: Path, key: str, value: Any) -> float:
    """A number read from `path` at `key`, or InputError if it is missing, not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{path}: {key} must be a finite number, got {value!r}")
    return float(value)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
