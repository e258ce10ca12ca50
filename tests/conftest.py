"""Shared fixtures: the repository, params files with overrides, and throwaway copies of the repo for DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gdpipe import config

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def load_default_params() -> dict:
    """params.yaml of the repository as a plain dict."""
    return YAML(typ="safe").load((REPO / "params.yaml").read_text())


def with_overrides(document: dict, overrides: dict[str, object]) -> dict:
    """A copy of `document` with dotted keys set, e.g. {"train.lr": 0.1}."""
    import copy

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


@pytest.fixture
def params():
    """The repository's validated params, with `params(**{"train.lr": 0.1})` for a variation."""

    def make(overrides: dict[str, object] | None = None) -> config.Params:
        return config.Params.model_validate(with_overrides(load_default_params(), overrides or {}))

    return make


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child dvc or stage process: this venv first, no inherited DVC_ROOT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    env |= {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return env | extra


def copy_repo(destination: Path) -> Path:
    """Copy this checkout's tracked and new files (not outputs, caches or .venv) into a fresh git repo."""
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


def dvc(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the venv's dvc in `repo` and return the finished process (output captured as text)."""
    done = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=repo, env=env or child_env(), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def stages_run(output: str) -> set[str]:
    """The names of the stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory) -> Path:
    """A copy of the repository after one full `dvc repro` (shared: tests must not modify it)."""
    repo = copy_repo(tmp_path_factory.mktemp("repo") / "repo")
    dvc(repo, "repro")
    return repo


@pytest.fixture
def own_reproduced_repo(reproduced_repo, tmp_path) -> Path:
    """A private copy of `reproduced_repo` (outputs, DVC cache, MLflow store and all), for tests that change it."""
    repo = tmp_path / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    # The store's experiment points at the original's artifact folder; a private copy gets its own store.
    shutil.rmtree(repo / "mlruns")
    (repo / "mlruns").mkdir()
    return repo
