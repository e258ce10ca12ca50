"""Throwaway copies of the repository, child environments and params files with overrides.

Plain functions (no pytest), shared by the tests (through conftest.py) and by `make bench`.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What the Makefile exports, so that tests and benchmarks run as `make` runs.
MAKE_ENV = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child dvc or stage process: this venv first, none of the caller's DVC
    or MLflow settings (DVC_ROOT, a tracking server, timeouts), and the settings the Makefile exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return env | {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"} | MAKE_ENV | extra


def copy_repo(destination: Path) -> Path:
    """Copy this checkout's tracked and new files (not outputs, caches or .venv) into a fresh git repo.

    The copy's .venv is a symlink to this one: run make there only with `-o .venv/.installed`, or
    make would reinstall the shared venv from the copy.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    destination.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(REPO / ".venv")
    git = ["git", "-c", "user.name=gdpipe tests", "-c", "user.email=tests@gdpipe.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=destination, check=True)
    return destination


def load_default_params() -> dict:
    """params.yaml of the repository as a plain dict."""
    return YAML(typ="safe").load((REPO / "params.yaml").read_text())


def with_overrides(document: dict, overrides: dict[str, object]) -> dict:
    """A copy of `document` with dotted keys set, e.g. {"train.lr": 0.1}."""
    result = copy.deepcopy(document)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[last] = value
    return result


def write_yaml(path: Path, document: object) -> Path:
    """Dump `document` as YAML to `path`."""
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return path
