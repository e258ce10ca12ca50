"""One trial of make tune: a DVC experiment of the pipeline with the trial's learning rate, and its objective.

    dvc exp run --temp -n <study>-<tag>-<number> \
        -S train.lr=<lr> -S train.epochs=<tune.epochs> -S track.experiment=<study>

The experiment is DVC's (`dvc exp show` lists it, `dvc exp apply` brings it into the workspace); its track stage
publishes it as the pipeline always does, one MLflow run per variant and result, here as child runs of the
study's parent run (record.lineage_tags).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from gdpipe.core.command import InputError
from gdpipe.core.config import VARIANTS, TuneParams
from gdpipe.track.record import TUNE_PARENT_VARIABLE, TUNE_TRIAL_VARIABLE


def experiment_name(tune: TuneParams, parent_run_id: str, number: int) -> str:
    """The trial's DVC experiment: the study, a piece of its parent run's id (two studies of one name, in two
    storages, run from one commit stay apart) and the trial's number."""
    return f"{tune.study}-{parent_run_id[:6]}-{number}"


def run(tune: TuneParams, lr: float, number: int, parent_run_id: str) -> tuple[str, float]:
    """Run the trial as a DVC experiment; its name and objective. InputError with DVC's last line if it failed."""
    name = experiment_name(tune, parent_run_id, number)
    dvc = Path(sys.executable).with_name("dvc")  # this venv's
    overrides = {"train.lr": repr(lr), "train.epochs": str(tune.epochs), "track.experiment": tune.study}
    command = [str(dvc), "exp", "run", "--temp", "-n", name]
    command += [arg for key, setting in overrides.items() for arg in ("-S", f"{key}={setting}")]
    env = os.environ | {TUNE_PARENT_VARIABLE: parent_run_id, TUNE_TRIAL_VARIABLE: str(number)}
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        said = lines[-1].strip() if lines else f"exit {done.returncode}"
        raise InputError(f"trial {number} (train.lr {lr:.6g}): dvc exp run failed: {said[:300]}")
    import dvc.api  # only here: a second to import

    return name, objective(json.loads(dvc.api.read("metrics.json", rev=name)))


def objective(metrics: dict) -> float:
    """The larger final loss of the variants in metrics.json; infinity if either diverged (a result, not a crash)."""
    losses = [metrics[variant].get("loss") for variant in VARIANTS]
    return math.inf if None in losses else max(losses)
