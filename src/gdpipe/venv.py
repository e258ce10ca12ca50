"""What every Python of the project's venv does as it starts: the Makefile installs `start()` as a .pth line.

- The venv's tools come first on PATH, as `source .venv/bin/activate` gives a shell: DVC starts its queue
  workers as a bare `dvc`, so `.venv/bin/dvc queue start` from a shell without the venv would otherwise
  start workers that never run.
- DVC commits experiments (`dvc exp run` with a changed workspace, `--temp`, the queue, `dvc exp save`)
  with the user's git identity, and stops with "Git user name and email must be configured" when a new
  account has none. For a DVC process only, and only when git has no identity, gdpipe names one in the
  environment (GIT_AUTHOR_* and GIT_COMMITTER_*, which git and DVC read): the user's git config is never
  written, and a configured identity always wins.
- DVC's temporary and queued experiments run in a copy whose config DVC writes as ASCII (configobj, in its
  executor): in a folder whose path is not ASCII they fail with a UnicodeEncodeError, a queued one only in its
  worker's log. Such a command stops at once, in one line that says why and what works.
"""

from __future__ import annotations

import os
import subprocess
import sys

EXPERIMENT_IDENTITY = ("gdpipe experiments", "experiments@gdpipe.invalid")  # name, email (.invalid: RFC 2606)
_ROLES = ("GIT_AUTHOR", "GIT_COMMITTER")


def start() -> None:
    """Both settings above, for this process and the ones it starts. Costs nothing outside DVC."""
    put_tools_on_path()
    if os.path.basename(sys.argv[0] if sys.argv else "") == "dvc":
        refuse_experiments_dvc_cannot_run(sys.argv[1:], os.getcwd())
        supply_git_identity()


def put_tools_on_path() -> None:
    """The venv's bin folder first on PATH (once)."""
    tools = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", os.defpath)
    if tools and path.split(os.pathsep)[0] != tools:
        os.environ["PATH"] = tools + os.pathsep + path


def refuse_experiments_dvc_cannot_run(args: list[str], folder: str) -> None:
    """Exit 2 with one line for a temporary or queued experiment that DVC cannot set up (`experiments_blocked`)."""
    in_a_copy = ("exp" in args and {"--temp", "--queue", "--run-all"} & set(args)) or args[:2] == ["queue", "start"]
    blocked = experiments_blocked(folder) if in_a_copy else None
    if blocked is None:
        return
    cause, remedy = blocked
    print(
        f"gdpipe: error: DVC cannot run temporary or queued experiments {cause}: it writes its configuration into "
        f"the experiment's copy as ASCII (an upstream bug); run dvc exp run without --temp or --queue, or {remedy}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(2)  # not SystemExit: Python is still importing site, which would turn it into a fatal error


def experiments_blocked(folder: str) -> tuple[str, str] | None:
    """Why DVC cannot set up a temporary or queued experiment of the repository holding `folder`, and what to do;
    None when it can: the folder's path, or a value in the repository's .git/config (which DVC copies too, a
    clone's origin say), is not ASCII."""
    if not folder.isascii():
        return f"in a folder whose path is not ASCII ({folder})", "clone the project to an ASCII path"
    if not _git_config_is_ascii(folder):
        return (
            "while the repository's .git/config holds a value that is not ASCII",
            "remove that value (git config --local --list shows it; a clone's remote.origin.url, say)",
        )
    return None


def _git_config_is_ascii(folder: str) -> bool:
    """Whether the .git/config of the repository holding `folder` is ASCII (True when there is none)."""
    current = folder
    while True:
        config = os.path.join(current, ".git", "config")
        if os.path.isfile(config):
            with open(config, "rb") as handle:
                return handle.read().isascii()
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def supply_git_identity() -> None:
    """Name gdpipe's experiment identity in the environment for what git's configuration lacks."""
    if all(f"{role}_{part}" in os.environ for role in _ROLES for part in ("NAME", "EMAIL")):
        return
    configured = [_git_config(key) for key in ("user.name", "user.email")]
    if all(configured):
        return
    name, email = (mine or ours for mine, ours in zip(configured, EXPERIMENT_IDENTITY, strict=True))
    for role in _ROLES:
        os.environ.setdefault(f"{role}_NAME", name)
        os.environ.setdefault(f"{role}_EMAIL", email)


def _git_config(key: str) -> str:
    """A value of git's configuration for the current folder ('' when unset, or when there is no git)."""
    try:
        done = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
