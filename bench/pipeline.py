"""pipeline: `dvc repro -f` / the lesson's script with MLflow logging (bench/tutorial_mlflow.py), and / the
bare script (bench/tutorial.py); with where the pipeline's time goes, stage by stage."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

from common import Row, empty_store, fresh_store, say, stage_commands, summarize, timed, timed_with_output
from support import REPO, VENV_BIN, copy_repo

GOALS = {"pipeline / tutorial+mlflow": ("<=", 1.0)}


def run(quick: bool, work: Path) -> dict:
    """dvc repro -f vs the tutorial script with MLflow, each into a fresh copy of one empty store.

    It leaves work/repo reproduced, which overhead.py and collector.py reuse.
    """
    repeats = 2 if quick else 3
    repo = copy_repo(work / "repo")
    template = empty_store(work / "template")
    dvc = str(VENV_BIN / "dvc")
    say("pipeline: first dvc repro (warm-up, untimed)")
    timed([dvc, "repro"], repo)
    script_dir = work / "script"
    to_script, to_bare, pipeline_s, script_s, bare_s = [], [], [], [], []
    for repeat in range(repeats):
        say(f"pipeline: repeat {repeat + 1}/{repeats}")
        fresh_store(repo, template)
        pipeline, repro_stdout = timed_with_output([dvc, "repro", "-f"], repo)
        shutil.rmtree(script_dir, ignore_errors=True)
        script_dir.mkdir()
        shutil.copy(template, script_dir / "mlflow.db")
        script = timed(
            [sys.executable, str(REPO / "bench/tutorial_mlflow.py"), f"sqlite:///{script_dir / 'mlflow.db'}"],
            script_dir,
        )
        bare = timed([sys.executable, str(REPO / "bench/tutorial.py")], script_dir)
        pipeline_s.append(pipeline), script_s.append(script), bare_s.append(bare)
        to_script.append(pipeline / script)
        to_bare.append(pipeline / bare)
    # Where the pipeline's time goes: each stage's command run alone (as DVC printed it), and what is
    # left of the median, DVC's own work (start-up, hashing, caching, rewriting dvc.lock per stage).
    say("pipeline: each stage's command alone")
    fresh_store(repo, template)
    stages = {
        stage: timed(["sh", "-c", command], repo, DVC_ROOT=str(repo)) for stage, command in stage_commands(repro_stdout)
    }
    return {
        "to_script": summarize(to_script),
        "to_bare_script": summarize(to_bare),
        "seconds": {"pipeline": pipeline_s, "script": script_s, "bare_script": bare_s},
        "breakdown_seconds": stages | {"dvc": statistics.median(pipeline_s) - sum(stages.values())},
        "package_scan_seconds": package_scan_seconds(),
    }


def package_scan_seconds() -> float:
    """What log_model's check of its requirements costs the track stage: MLflow reads the metadata of
    every installed distribution (importlib_metadata.packages_distributions), timed here alone in a
    fresh process. gdpipe once skipped it by patching a private MLflow function; public API pays it.
    """
    script = "import time, importlib_metadata as m; t = time.perf_counter(); m.packages_distributions(); "
    script += "print(time.perf_counter() - t)"
    return statistics.median(float(timed_with_output([sys.executable, "-c", script], REPO)[1]) for _ in range(3))


def rows(result: dict) -> list[Row]:
    """To the script with MLflow (the goal), and to the bare script."""
    return [
        ("pipeline / tutorial+mlflow", result["to_script"], GOALS["pipeline / tutorial+mlflow"]),
        ("pipeline / bare tutorial", result["to_bare_script"], None),
    ]


def notes(result: dict) -> list[str]:
    """The median pipeline's seconds stage by stage, and the package scan within track."""
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in result["breakdown_seconds"].items())
    return [
        f"pipeline, median {statistics.median(result['seconds']['pipeline']):.2f} s: {parts}",
        f"of track: log_model's scan of the installed packages {result['package_scan_seconds']:.2f} s",
    ]
