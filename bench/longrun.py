"""longrun: the track stage of a 10^6-epoch result, w and loss bounded to track.max_points_per_metric /
the same with every epoch logged (the key set to the number of epochs)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from common import SRC, Row, empty_store, say, summarize, timed
from support import MAKE_ENV, REPO, TRACK_ARGS, build_workspace, load_default_params, with_overrides, write_yaml


def run(quick: bool, work: Path) -> dict:
    """The track stage of a long result, bounded (params.yaml's max_points_per_metric) / every epoch logged,
    each into a fresh copy of one empty store; with the database's size and MLflow's read of one metric's history.

    One repeat: every epoch of 10^6 takes minutes to log, and the ratio is far from 1 either way.
    """
    from mlflow import MlflowClient

    epochs = 100_000 if quick else 1_000_000
    os.environ.update(MAKE_ENV)
    say(f"longrun: training {epochs} epochs of both variants")
    workspace = build_workspace(work / "longrun", {"train.epochs": epochs})
    bounded = load_default_params()["track"]["max_points_per_metric"]
    template = empty_store(work / "longrun-template")
    track = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
    seconds, database_mb, history_seconds = {}, {}, {}
    for side, points in (("bounded", bounded), ("every epoch", epochs)):
        document = YAML(typ="safe").load((workspace / "params.yaml").read_text())
        write_yaml(workspace / "params.yaml", with_overrides(document, {"track.max_points_per_metric": points}))
        db = work / f"longrun-{points}" / "mlflow.db"
        db.parent.mkdir()
        shutil.copy(template, db)
        uri = f"sqlite:///{db}"
        say(f"longrun: track stage, {side} ({points} points per metric)")
        seconds[side] = timed(track, workspace, PYTHONPATH=str(SRC), MLFLOW_TRACKING_URI=uri)
        database_mb[side] = round(db.stat().st_size / 1e6, 1)  # beside it, artifacts: the same for both
        run_id = json.loads((workspace / "runs.json").read_text())["torch"]["run_id"]
        start = time.perf_counter()
        points_read = len(MlflowClient(uri).get_metric_history(run_id, "loss"))
        history_seconds[side] = time.perf_counter() - start
        assert points_read == min(points, epochs), points_read
    ratio = seconds["bounded"] / seconds["every epoch"]
    return summarize([ratio]) | {
        "epochs": epochs,
        "max_points_per_metric": bounded,
        "seconds": seconds,
        "database_mb": database_mb,
        "metric_history_seconds": history_seconds,
    }


def rows(result: dict) -> list[Row]:
    """One row, without a goal."""
    return [(f"track 1e{len(str(result['epochs'])) - 1} epochs, bounded / all", result, None)]


def notes(result: dict) -> list[str]:
    """Each side's seconds, database size and read of one metric's history."""
    sides = "; ".join(
        f"{side} {result['seconds'][side]:.1f} s, database {result['database_mb'][side]:.0f} MB, "
        f"one metric's history read in {result['metric_history_seconds'][side]:.2f} s"
        for side in ("bounded", "every epoch")
    )
    return [f"track of {result['epochs']} epochs: {sides}"]
