"""reproduce: `make reproduce` of the challenger / `dvc repro -f` of the same commit, interleaved in the same run.

Both run every stage of that commit and publish its result into an MLflow store that holds none yet: `dvc repro
-f` into a fresh copy of an empty store (as pipeline.py does), make reproduce into its throwaway store, whose
tables it makes while the first stages run. What the rebuild adds: reading the lineage, a git worktree with a DVC
cache of its own, loading the registered and the rebuilt model through MLflow, and the comparison.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from common import Row, empty_store, fresh_store, reproduced_repo, say, summarize, timed
from support import VENV_BIN

GOALS = {"reproduce / dvc repro -f": ("<=", 1.5)}


def run(quick: bool, work: Path) -> dict:
    """make reproduce MODEL=gdpipe-torch@challenger vs dvc repro -f, on the repo the pipeline benchmark reproduced."""
    repo = reproduced_repo(work)
    template = empty_store(work / "reproduce-template")
    repeats = 2 if quick else 3
    repro_s, reproduce_s = [], []
    for repeat in range(repeats):
        say(f"reproduce: repeat {repeat + 1}/{repeats}")
        fresh_store(repo, template)
        # Also what make reproduce then rebuilds: version 1 of gdpipe-torch, the challenger, of this commit.
        repro_s.append(timed([str(VENV_BIN / "dvc"), "repro", "-f"], repo))
        command = ["make", "-o", ".venv/.installed", "reproduce"]  # the copy's .venv is this checkout's
        reproduce_s.append(timed(command, repo, MODEL="gdpipe-torch@challenger"))  # fails the bench unless identical
    return {
        "ratio": summarize([rebuild / repro for rebuild, repro in zip(reproduce_s, repro_s, strict=True)]),
        "seconds": {"reproduce": reproduce_s, "repro": repro_s},
    }


def rows(result: dict) -> list[Row]:
    """One row."""
    return [("reproduce / dvc repro -f", result["ratio"], GOALS["reproduce / dvc repro -f"])]


def notes(result: dict) -> list[str]:
    """The medians in seconds."""
    seconds = {name: statistics.median(values) for name, values in result["seconds"].items()}
    return [f"reproduce: make reproduce {seconds['reproduce']:.2f} s, dvc repro -f {seconds['repro']:.2f} s (medians)"]
