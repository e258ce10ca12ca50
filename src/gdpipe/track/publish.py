"""What a published run holds in MLflow, and `publish`, which makes one run per variant and result.

The `track` stage calls `publish` after training has finished, so a run exists only for a finished
result: a stage that DVC skips or restores creates no run, and a killed training leaves none stuck
in RUNNING. Each run holds the record's params, the data set as its input, the model (a pyfunc,
registered as a version), the metrics and the artifacts; claim.py makes sure a result gets one run,
however many publish it at once.
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import mlflow.data.sources
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from gdpipe.core import progress
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import signals_held
from gdpipe.track import claim
from gdpipe.track.failures import STORE_ERRORS, store_failure
from gdpipe.track.record import RunRecord, now_ms
from gdpipe.track.store import open_experiment, retried_if_raced, store_lock, wait_until_free
from gdpipe.track.versions import model_name, register
from gdpipe.track.where import redact

# Metrics per log_batch call: MLflow's own limit per request, and one step of the progress bar.
METRICS_PER_BATCH = 1000
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
# What the model answers, one number per x; no input schema, so that MLflow passes a list, an array
# or a DataFrame through and the model says what it accepts (pyfunc_model.as_inputs).
SIGNATURE = ModelSignature(outputs=Schema([ColSpec(DataType.double)]))
INPUT_EXAMPLE = [5.0]  # shown in the UI, and the shape `mlflow models predict` and the server take


def publish(
    records: Sequence[RunRecord], dataset: Dataset, experiment: str, model_prefix: str, uri: str
) -> dict[str, dict]:
    """Find or create each record's run, and its model's version in the registry (`<model_prefix>-<variant>`).

    Exactly once, whatever the number of publishers of the same result at the same time (claim.py).
    Returns variant -> {run_id, experiment_id, tracking_uri, created, abandoned_runs_killed,
    fingerprint, status, model_name, model_version}; abandoned_runs_killed are the runs that dead
    publishers had left RUNNING, marked KILLED on the way.
    """
    mlflow.set_tracking_uri(uri)  # for the fluent calls
    published = {}
    with store_lock(uri) as sole_writer:
        wait_until_free(uri)
        # From here each call to the store is let finish: a stop lands between two of them, so a sqlite
        # store is never left locked half-way and a new run's id is never lost (its run is marked KILLED).
        with signals_held() as stop_if_asked:
            client, experiment_id = open_experiment(experiment, uri)
            for record in records:
                name = model_name(model_prefix, record.variant)
                fill = functools.partial(_fill, client, record, dataset)
                version_of = functools.partial(register, client, experiment_id, record=record, name=name)
                try:
                    run_id, version, created, abandoned = claim.publish_once(
                        client, experiment_id, record, sole_writer, fill, version_of, stop_if_asked
                    )
                except STORE_ERRORS as err:  # the store went away or refused mid-way: one line, no traceback
                    raise store_failure(err, uri, f"publishing {record.variant}") from None
                published[record.variant] = {
                    "run_id": run_id,
                    "experiment_id": experiment_id,
                    "tracking_uri": redact(uri),
                    "created": created,
                    "abandoned_runs_killed": abandoned,
                    "fingerprint": record.fingerprint,
                    "status": record.tags["gdpipe.status"],
                    "model_name": name,
                    "model_version": version,
                }
    return published


def _fill(client: MlflowClient, record: RunRecord, dataset: Dataset, run_id: str, between: Callable[[], None]) -> None:
    """Log the record into its claimed run: params, the data set as its input, the model, the metrics and
    the artifacts; `between` is called between two calls to the store (claim.py: a stop lands, the run beats)."""
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in record.params.items()])
    between()
    # The model before the metrics: log_model reads back the whole history of every metric the run
    # already has (to link those of its step to the model), 20,000 points for 10,000 epochs.
    mlflow.start_run(run_id=run_id)  # log_input and log_model are fluent API only
    try:
        retried_if_raced(mlflow.log_input, _dataset(record, dataset), context="training")
        if record.has_model:
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={"trained_model": str(record.model_path)},
                signature=SIGNATURE,
                input_example=INPUT_EXAMPLE,
                # Explicit: inferring requirements costs seconds and would capture the whole venv.
                pip_requirements=[f"mlflow=={mlflow.__version__}"],
                # MLflow would tag the model with MLFLOW_TRACKING_USERNAME, a credential.
                tags={"mlflow.user": _local_user()},
            )
    finally:
        # Still RUNNING: FINISHED tells other publishers the run is complete, its version too.
        mlflow.end_run(status="RUNNING")
    between()
    log_metrics(client, run_id, record, between)
    for path in record.artifacts:
        client.log_artifact(run_id, str(path))
        between()


def log_metrics(
    client: MlflowClient, run_id: str, record: RunRecord, between: Callable[[], None] = lambda: None
) -> None:
    """Log the record's metrics in batches of MLflow's maximum size, with a progress bar on a terminal;
    `between` is called after each batch."""
    metrics = _metrics(record)
    with progress.bar(len(metrics), f"publish {record.variant}", "metric") as bar:
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            batch = metrics[start : start + METRICS_PER_BATCH]
            client.log_batch(run_id, metrics=batch)
            bar.update(len(batch))
            between()


def _local_user() -> str:
    """Who ran this, as the computer knows them (what MLflow records when no credentials are set)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry, as in some containers
        return "unknown"


def _metrics(record: RunRecord) -> list[Metric]:
    """w and loss at the record's metric rows (step = epoch; at most track.max_points_per_metric), then the
    final values.

    When the training times are known, each epoch's timestamp is placed between them in
    proportion to its number (full-batch epochs take equal time), so MLflow's time axis is
    roughly right; otherwise every point carries the publishing time.
    """
    history, rows = record.history, record.metric_rows
    epochs = history.epoch[rows]
    if record.started_ms is not None and record.finished_ms is not None and history.epoch.size:
        span = record.finished_ms - record.started_ms
        stamps = (record.started_ms + span * epochs / history.epoch[-1]).astype(np.int64).tolist()
    else:
        stamps = [now_ms()] * epochs.size
    metrics = []
    for epoch, w, loss, stamp in zip(
        epochs.tolist(), history.w[rows].tolist(), history.loss[rows].tolist(), stamps, strict=True
    ):
        metrics.append(Metric("w", w, stamp, epoch))
        metrics.append(Metric("loss", loss, stamp, epoch))
    final_stamp = record.finished_ms or now_ms()
    last_epoch = int(history.epoch[-1]) if history.epoch.size else 0
    metrics += [Metric(key, value, final_stamp, last_epoch) for key, value in record.final_metrics.items()]
    return metrics


def _dataset(record: RunRecord, dataset: Dataset) -> mlflow.data.dataset.Dataset:
    """The data set as an MLflow dataset: name, digest (its SHA-256), the file it came from, shapes."""
    # A local file, said explicitly: from a plain path MLflow would guess among two local-file sources, and warn.
    source = mlflow.data.sources.LocalArtifactDatasetSource(str(record.dataset_path))
    return mlflow.data.from_numpy(
        dataset.x, targets=dataset.y, source=source, name="dataset", digest=record.dataset_sha256[:16]
    )
