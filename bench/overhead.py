"""overhead: `dvc repro` with everything up to date / `dvc status`, on the same repository."""

from __future__ import annotations

from pathlib import Path

from common import Row, reproduced_repo, say, summarize, timed
from support import VENV_BIN

GOALS = {"repro up to date / status": ("<=", 1.3)}


def run(quick: bool, work: Path) -> dict:
    """dvc repro with nothing to do vs dvc status, on the repo the pipeline benchmark reproduced."""
    repo = reproduced_repo(work)
    repeats = 3 if quick else 7
    ratios = []
    say(f"overhead: {repeats} repeats")
    for _ in range(repeats):
        status = timed([str(VENV_BIN / "dvc"), "status"], repo)
        repro = timed([str(VENV_BIN / "dvc"), "repro"], repo)
        ratios.append(repro / status)
    return summarize(ratios)


def rows(result: dict) -> list[Row]:
    """One row."""
    return [("repro up to date / status", result, GOALS["repro up to date / status"])]
