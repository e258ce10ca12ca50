"""DVC remotes, for integration/test_remote.py and test_remote_faults.py: git clones of a copy that pushed,
their default remote, and make push and make pull as gdpipe.remote runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import files_under, src_env


def run_remote(repo: Path, action: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m gdpipe.remote <action>` in `repo`: what make push and make pull run, without make's own lines."""
    command = [sys.executable, "-m", "gdpipe.remote", action]
    return subprocess.run(command, cwd=repo, env=env or src_env(), capture_output=True, text=True, timeout=120)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def clone(source: Path, destination: Path) -> Path:
    """A git clone of `source` (committed files only: no outputs, no DVC cache) sharing this checkout's .venv."""
    git(source.parent, "clone", "-q", str(source), str(destination))
    (destination / ".venv").symlink_to(Path(sys.executable).parents[1])
    return destination


def workspace_bytes(repo: Path) -> dict[str, bytes]:
    """Every file of `repo` outside .git and DVC's own folder (its cache, its temporary files), with its bytes."""
    skip = (repo / ".git", repo / ".dvc")
    return {
        str(path.relative_to(repo)): path.read_bytes()
        for path in files_under(repo)
        if not any(path.is_relative_to(folder) for folder in skip)
    }


def set_remote(repo: Path, url: str, **settings: str) -> None:
    """This clone's own default remote, as `dvc remote add --local -d` writes it to .dvc/config.local, with
    DVC's verify on as docs/remote.md says (make pull refuses a remote without it) unless `settings` say."""
    lines = ["[core]", "    remote = mine", "['remote \"mine\"']", f"    url = {url}"]
    lines += [f"    {key} = {value}" for key, value in ({"verify": "true"} | settings).items()]
    (repo / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")
