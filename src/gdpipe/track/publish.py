"""MLflow, owned here: the store, one run per variant and result, its metrics, artifacts, model and status.

The `track` stage calls `publish` after training has finished, so a run exists only for a finished
result: a stage that DVC skips or restores creates no run, and a killed training leaves none stuck
in RUNNING. Public MLflow API only (`mlflow`, `MlflowClient`, `mlflow.entities`, `mlflow.data`).
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path

import mlflow
import mlflow.data.sources
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from gdpipe.core import progress
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError, Terminated, signals_held
from gdpipe.track.record import RunRecord, now_ms
from gdpipe.track.registry import model_name, register
from gdpipe.track.store import first_line, redact, sqlite_file, store_lock

FINGERPRINT_TAG = "gdpipe.fingerprint"
# Metrics per log_batch call: MLflow's own limit per request, and one step of the progress bar.
METRICS_PER_BATCH = 1000
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
# What the model answers, one number per x; no input schema, so that MLflow passes a list, an array
# or a DataFrame through and the model says what it accepts (pyfunc_model.as_inputs).
SIGNATURE = ModelSignature(outputs=Schema([ColSpec(DataType.double)]))
INPUT_EXAMPLE = [5.0]  # shown in the UI, and the shape `mlflow models predict` and the server take
# The experiment's kind for MLflow 3: model training, not GenAI. (The UI of MLflow 3.17 picks its view
# from its own GenAI / Model training switch, or ?workflowType=machine_learning, not from this tag.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def publish(
    records: Sequence[RunRecord], dataset: Dataset, experiment: str, model_prefix: str, uri: str
) -> dict[str, dict]:
    """Find or create each record's run, and its model's version in the registry (`<model_prefix>-<variant>`).

    Returns variant -> {run_id, experiment_id, tracking_uri, created, abandoned_runs_killed,
    fingerprint, status, model_name, model_version}; abandoned_runs_killed are the variant's runs
    in this experiment that a killed publisher had left RUNNING (sqlite only).
    """
    mlflow.set_tracking_uri(uri)  # for the fluent calls
    published = {}
    with store_lock(uri):
        client, experiment_id = _open(experiment, uri)
        for record in records:
            try:
                abandoned = _mark_abandoned_runs_killed(client, experiment_id, record, uri)
                run_id, created = _find_or_create_run(client, experiment_id, record, dataset, uri)
                name = model_name(model_prefix, record.variant)
                version = register(client, experiment_id, run_id, record, name)
            except (MlflowException, OSError) as err:  # the store went away or refused mid-way: one line, no traceback
                raise InputError(
                    f"MLflow tracking store {redact(uri)} failed while publishing {record.variant}: "
                    f"{first_line(err, uri)}{_notes(err)}"
                ) from None
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


def _mark_abandoned_runs_killed(client: MlflowClient, experiment_id: str, record: RunRecord, uri: str) -> list[str]:
    """Mark KILLED this variant's gdpipe runs in the experiment that are still RUNNING: a publisher
    killed with SIGKILL (or a power cut) had no chance to mark them. Returns their ids.

    Only in a sqlite store, where every gdpipe publisher takes its turn under `store_lock`: while we
    hold it, none is writing a run. (One that wrote through an MLflow server on the same file would
    bypass the lock; publish to the file, as `make repro` does.) A server has no such lock, and a
    RUNNING run there may be another worker's, being written right now, so it is left alone.
    """
    if sqlite_file(uri) is None:
        return []
    running = (
        f"tags.variant = '{record.variant}' and tags.`{FINGERPRINT_TAG}` LIKE '%' and attributes.status = 'RUNNING'"
    )
    with signals_held():
        abandoned = [run.info.run_id for run in client.search_runs([experiment_id], filter_string=running)]
        for run_id in abandoned:
            client.set_terminated(run_id, "KILLED")
    return abandoned


def _open(name: str, uri: str) -> tuple[MlflowClient, str]:
    """A client of the store and the experiment's id, created on first use with its artifacts inside the store.

    Called under `store_lock`: making the client makes a sqlite store's tables the first time, and
    two processes doing that at once break it ("duplicate column name").
    """
    try:
        with signals_held():
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(name)
            if found is None:
                database = sqlite_file(uri)
                location = (database.parent / "artifacts").as_uri() if database else None
                return client, client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:
                    client.set_experiment_tag(found.experiment_id, key, value)
            return client, found.experiment_id
    except (MlflowException, OSError) as err:
        raise InputError(f"MLflow tracking store {redact(uri)} did not answer: {first_line(err, uri)}") from None


def _notes(err: BaseException) -> str:
    return "".join(f"; {note}" for note in getattr(err, "__notes__", ()))


def _find_or_create_run(
    client: MlflowClient, experiment_id: str, record: RunRecord, dataset: Dataset, uri: str
) -> tuple[str, bool]:
    """The FINISHED run with this fingerprint if there is one, else a new, complete run.

    A run is never left RUNNING by an exception: Ctrl-C or kill marks it KILLED, any other failure
    FAILED, and a note on the exception says which (it becomes part of the line the stage prints).
    Each call to the store holds Ctrl-C and kill until it returns (`signals_held`), so a stop lands
    between calls, never inside a store's transaction.
    """
    finished = f"tags.`{FINGERPRINT_TAG}` = '{record.fingerprint}' and attributes.status = 'FINISHED'"
    with signals_held():
        existing = client.search_runs([experiment_id], filter_string=finished, max_results=1)
    if existing:
        return existing[0].info.run_id, False
    tags = record.tags | {FINGERPRINT_TAG: record.fingerprint}
    run_id = None
    try:
        with signals_held():  # a stop that comes while the run is made lands once its id is known
            run_id = client.create_run(
                experiment_id, start_time=record.started_ms or now_ms(), tags=tags, run_name=record.name
            ).info.run_id
        with signals_held():
            client.log_batch(run_id, params=[Param(key, str(value)) for key, value in record.params.items()])
        log_metrics(client, run_id, record)
        for path in record.artifacts:
            with signals_held():
                client.log_artifact(run_id, str(path))
        with signals_held(), mlflow.start_run(run_id=run_id):  # log_input and log_model are fluent API only
            mlflow.log_input(_dataset(record, dataset), context="training")
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
        with signals_held():
            # Ended afresh: start_run's exit set FINISHED at the time of publishing, not of training.
            client.set_terminated(run_id, "FINISHED", end_time=record.finished_ms or now_ms())
    except BaseException as err:
        if run_id is None:
            raise
        status = "KILLED" if isinstance(err, KeyboardInterrupt | Terminated) else "FAILED"
        note = f"{record.variant} run {run_id} marked {status}"
        try:
            with signals_held():
                client.set_terminated(run_id, status)
        except Exception as status_err:
            note = f"{record.variant} run {run_id} could not be marked {status} and stays RUNNING"
            note += f" ({first_line(status_err, uri)})"
        except BaseException as stop:  # a stop held while marking: it wins, and says what was done
            stop.add_note(note)
            raise
        err.add_note(note)
        raise
    return run_id, True


def log_metrics(client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """Log the record's metrics in batches of MLflow's maximum size, with a progress bar on a terminal."""
    metrics = _metrics(record)
    bar = progress.bar(len(metrics), f"publish {record.variant}", "metric")
    try:
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            batch = metrics[start : start + METRICS_PER_BATCH]
            with signals_held():
                client.log_batch(run_id, metrics=batch)
            bar.update(len(batch))
    finally:
        bar.close()


def _local_user() -> str:
    """Who ran this, as the computer knows them (what MLflow records when no credentials are set)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry, as in some containers
        return "unknown"


def _metrics(record: RunRecord) -> list[Metric]:
    """w and loss per recorded epoch (step = epoch), then the final values.

    When the training times are known, each epoch's timestamp is placed between them in
    proportion to its number (full-batch epochs take equal time), so MLflow's time axis is
    roughly right; otherwise every point carries the publishing time.
    """
    history = record.history
    if record.started_ms is not None and record.finished_ms is not None and history.epoch.size:
        span = record.finished_ms - record.started_ms
        stamps = (record.started_ms + span * history.epoch / history.epoch[-1]).astype(np.int64).tolist()
    else:
        stamps = [now_ms()] * history.epoch.size
    metrics = []
    for epoch, w, loss, stamp in zip(
        history.epoch.tolist(), history.w.tolist(), history.loss.tolist(), stamps, strict=True
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
