"""collector: the stage commands with gdpipe's garbage-collector setting / with the collector off."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from common import Row, empty_store, fresh_store, repro_output, reproduced_repo, say, stage_commands, summarize, timed

# A stage script run as DVC runs it, optionally with the garbage collector off from the start.
STAGE_WITH_COLLECTOR = """
import gc, runpy, sys
if sys.argv[1] == "off":
    gc.disable()
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(quick: bool, work: Path) -> dict:
    """Every stage command with gdpipe's collector settings (on; the track stage's threshold) / with it off.

    Off is what gdpipe did before: gc.disable() for every command, training included.
    """
    repo = reproduced_repo(work)
    template = work / "template" / "mlflow.db"
    if not template.exists():
        template = empty_store(work / "template")
    commands = [shlex.split(command.split("stages/python", 1)[1]) for _, command in stage_commands(repro_output(repo))]
    repeats = 2 if quick else 4
    ratios, seconds = [], {"on": [], "off": []}
    say(f"collector: {len(commands)} stage commands, {repeats} repeats")
    for repeat in range(repeats):
        spent = {}
        for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            fresh_store(repo, template)
            spent[mode] = sum(
                timed(
                    [sys.executable, "-c", STAGE_WITH_COLLECTOR, mode, *command],
                    repo,
                    DVC_ROOT=str(repo),
                    PYTHONPATH="src",
                )
                for command in commands
            )
            seconds[mode].append(spent[mode])
        ratios.append(spent["on"] / spent["off"])
    return summarize(ratios) | {"seconds": seconds}


def rows(result: dict) -> list[Row]:
    """One row, without a goal."""
    return [("stages, collector on / off", result, None)]
