"""What the benchmarks share: this checkout's code on the path, the median-of-ratios summary, progress
lines on stderr, params files with overrides, timed commands, and empty MLflow stores to copy.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# This checkout's code and test helpers, whatever the venv's editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from support import REPO, VENV_BIN, child_env, copy_repo, load_default_params, with_overrides, write_yaml

SRC = REPO / "src"
# A line of the table: its label, the summary of its ratios, and its goal (("<=" or ">=", bound)) if it has one.
Row = tuple[str, dict, tuple[str, float] | None]


def summarize(ratios: list[float]) -> dict:
    """Median, min and max of the per-repeat ratios, and the ratios themselves."""
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "repeats": [round(r, 4) for r in ratios],
    }


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def write_params(path: Path, **overrides) -> Path:
    """params.yaml of the repo with dotted overrides, as YAML."""
    return write_yaml(path, with_overrides(load_default_params(), overrides))


def timed(command: list[str], cwd: Path, **env: str) -> float:
    """Wall time of a command that must succeed."""
    return timed_with_output(command, cwd, **env)[0]


def timed_with_output(command: list[str], cwd: Path, **env: str) -> tuple[float, str]:
    """Wall time and stdout of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=child_env(**env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout


def reproduced_repo(work: Path) -> Path:
    """work/repo: a copy of this checkout with the pipeline reproduced (the pipeline benchmark's, if it ran)."""
    repo = work / "repo"
    if not repo.exists():
        copy_repo(repo)
        timed([str(VENV_BIN / "dvc"), "repro"], repo)
    return repo


def repro_output(repo: Path) -> str:
    """What `dvc repro --dry -f` prints: every stage and its command."""
    return timed_with_output([str(VENV_BIN / "dvc"), "repro", "--dry", "-f"], repo)[1]


def stage_commands(repro_stdout: str) -> list[tuple[str, str]]:
    """(stage, command) in the order `dvc repro` ran them, as it printed them ("Running stage 'x':", then "> cmd")."""
    commands, stage = [], None
    for line in repro_stdout.splitlines():
        if line.startswith("Running stage '"):
            stage = line.split("'")[1]
        elif line.startswith("> ") and stage:
            commands.append((stage, line[2:]))
            stage = None
    return commands


def empty_store(folder: Path) -> Path:
    """An MLflow sqlite store with its tables created and nothing in it, to copy before each run."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def fresh_store(repo: Path, template: Path) -> None:
    """The repo's mlruns/ as a copy of the empty template store."""
    shutil.rmtree(repo / "mlruns")
    (repo / "mlruns").mkdir()
    shutil.copy(template, repo / "mlruns" / "mlflow.db")
