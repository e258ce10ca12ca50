"""What one variant's MLflow run will hold, gathered from the stage outputs: no MLflow here.

A run is identified by a fingerprint of everything that shaped it (the variant, its params, and
the bytes of the data, history and model), so the same result always finds the same run, also
after DVC restored the files from its cache. How many of its epochs the run's charts hold
(`track.max_points_per_metric`, `spread`) is how the result is shown, not part of it: no fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdpipe.core import config
from gdpipe.core.artifacts import History, TrainedModel, read_timing, read_world_size
from gdpipe.core.command import InputError
from gdpipe.core.config import Params, Variant
from gdpipe.core.files import file_sha256, require_finite

# Final values logged beside the per-epoch w and loss (the last epoch's values are those series' ends).
FINAL_METRICS = ("prediction", "abs_error", "w_star_distance", "epochs_trained")


@dataclass(frozen=True)
class RunRecord:
    """One variant's result, ready to publish."""

    variant: Variant
    name: str
    fingerprint: str
    params: dict[str, object]
    tags: dict[str, str]
    history: History
    metric_rows: np.ndarray  # the rows of `history` logged as per-epoch metrics (`spread`)
    final_metrics: dict[str, float]
    model_path: Path
    has_model: bool  # False when training diverged before its first finite step
    started_ms: int | None  # when training ran, if known
    finished_ms: int | None
    dataset_path: Path
    dataset_sha256: str
    artifacts: tuple[Path, ...]

    @property
    def diverged(self) -> bool:
        return self.tags["gdpipe.status"] == "diverged"


def run_params(params: Params, variant: Variant) -> dict[str, object]:
    """Every param that shaped the result, flattened under the same names for both variants.

    The variant-specific options map onto shared names (train.gradient: mean/sum/autograd,
    train.device), so MLflow's "show diff only" isolates what really differs between runs.
    """
    flat: dict[str, object] = {"variant": variant}
    flat |= {f"data.{key}": value for key, value in params.data.model_dump().items()}
    train = params.train
    flat |= {
        "train.lr": train.lr,
        "train.epochs": train.epochs,
        "train.w_init": train.w_init,
        "train.log_every": train.log_every,
    }
    flat["train.gradient"] = train.numpy.gradient if variant == "numpy" else "autograd"
    flat["train.device"] = "cpu" if variant == "numpy" else train.torch.device
    flat["evaluate.x"] = params.evaluate.x
    return flat


def spread(count: int, limit: int) -> np.ndarray:
    """Indices of at most `limit` of `count` points, evenly spread, the first and last always in; all if fewer."""
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    assert limit >= 2, limit  # config.TrackParams: first and last
    # Index i * (count - 1) / (limit - 1), rounded half up in integers: exact, and strictly increasing
    # because the step is above 1, so the gaps differ by at most one point.
    steps = np.arange(limit, dtype=np.int64) * (count - 1)
    return (steps + (limit - 1) // 2) // (limit - 1)


def fingerprint(variant: str, flat_params: dict[str, object], file_hashes: dict[str, str]) -> str:
    """SHA-256 over the variant, its params and the content of its input and output files."""
    payload = json.dumps({"variant": variant, "params": flat_params, "files": file_hashes}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def lineage_tags(workdir: Path) -> dict[str, str]:
    """Git commit, dirty flag and the DVC experiment, as far as they are known here."""
    tags: dict[str, str] = {}
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    try:
        commit = _git(workdir, "rev-parse", "HEAD").strip()
        # dvc.lock and metrics.json are rewritten by `dvc repro` itself; they do not make the sources dirty.
        dirty = _git(
            workdir, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics.json"
        )
    except (OSError, subprocess.CalledProcessError):
        return tags  # not a git checkout: no lineage to record, which is not an error
    return tags | {
        "mlflow.source.git.commit": commit,
        "git.commit": commit,
        "git.dirty": str(bool(dirty.strip())).lower(),
    }


def _git(workdir: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True, check=True).stdout


def check_trained_with(model: TrainedModel, model_path: Path, params: Params) -> None:
    """InputError unless the model was trained with the params about to be published with it.

    They differ when params.yaml changed as the train stage ended, after its own check: DVC then
    recorded the new values for the model in dvc.lock and in its run cache, so a plain `dvc repro`
    would bring the same model back; only a forced run of that stage trains it again.
    """
    changed = config.changes(model.trained_with, config.values(params, config.training_keys(model.variant)))
    if changed:
        stage = f"train@{model.variant}"
        raise InputError(
            f"{model_path} was trained with other params than params.yaml gives ({changed}): params.yaml changed "
            f"as the {stage} stage ended, after its last check; nothing was published: train it again with "
            f"'.venv/bin/dvc repro --force --single-item {stage}', then run make repro"
        )


def build_record(
    params: Params,
    metrics: dict,
    dataset_path: Path,
    variant: str,
    history_path: Path,
    model_path: Path,
    metrics_path: Path,
    extra_artifacts: tuple[Path, ...],
    lineage: dict[str, str],
) -> RunRecord:
    """Read one variant's outputs and assemble its run; InputError naming the file if one is bad."""
    history = History.read_csv(history_path)
    model = TrainedModel.load(model_path, variant)
    check_trained_with(model, model_path, params)
    section = metrics.get(variant) if isinstance(metrics, dict) else None
    if not isinstance(section, dict):
        raise InputError(f"{metrics_path}: no section for the variant {variant!r} (rerun the evaluate stage)")
    final = {
        key: require_finite(metrics_path, f"{variant}.{key}", section[key]) for key in FINAL_METRICS if key in section
    }
    try:
        final["w_star"] = require_finite(metrics_path, "optimum.w_star", metrics["optimum"]["w_star"])
        parity = metrics["parity"]["max_abs_w_diff"]
    except (KeyError, TypeError):
        raise InputError(
            f"{metrics_path}: missing optimum.w_star or parity.max_abs_w_diff (rerun the evaluate stage)"
        ) from None
    if parity is not None:
        final["parity_max_abs_w_diff"] = require_finite(metrics_path, "parity.max_abs_w_diff", parity)
    timing = read_timing(history_path)
    if timing:
        final["training_seconds"] = (timing[1] - timing[0]) / 1000
    flat = run_params(params, variant)
    dataset_sha256 = file_sha256(dataset_path)
    hashes = {"dataset": dataset_sha256, "history": file_sha256(history_path), "model": file_sha256(model_path)}
    tags = lineage | {
        "variant": variant,
        "gdpipe.status": "diverged" if model.diverged else "trained",
        "data.sha256": dataset_sha256,
    }
    if model.diverged:
        tags["gdpipe.diverged_at_epoch"] = str(model.diverged_at_epoch)
    if world_size := read_world_size(history_path):  # a tag: the result, so its run, is the same on any number
        tags["gdpipe.world_size"] = str(world_size)
    rows = spread(history.epoch.size, params.track.max_points_per_metric)
    if rows.size < history.epoch.size:  # a chart of fewer points than the run has: say where the rest are
        tags["gdpipe.metric_points"] = (
            f"w and loss at {rows.size} of {history.epoch.size} recorded epochs, evenly spread from the first "
            f"to the last; every one in the artifact {history_path.name}"
        )
    experiment_name = os.environ.get("DVC_EXP_NAME")
    return RunRecord(
        variant=variant,
        name=f"{variant}-{experiment_name}" if experiment_name else variant,
        fingerprint=fingerprint(variant, flat, hashes),
        params=flat,
        tags=tags,
        history=history,
        metric_rows=rows,
        final_metrics=final,
        model_path=model_path,
        has_model=model.w is not None,
        started_ms=timing[0] if timing else None,
        finished_ms=timing[1] if timing else None,
        dataset_path=dataset_path,
        dataset_sha256=dataset_sha256,
        artifacts=(history_path, metrics_path, *extra_artifacts),
    )


def now_ms() -> int:
    """The current time in MLflow's unit."""
    return time.time_ns() // 1_000_000
