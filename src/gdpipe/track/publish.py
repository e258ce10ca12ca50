"""MLflow, owned here: the store, one run per variant and result, its metrics, artifacts, model and status.

The `track` stage calls `publish` after training has finished, so a run exists only for a finished
result: a stage that DVC skips or restores creates no run, and a killed training leaves none stuck
in RUNNING. Public MLflow API only (`mlflow`, `MlflowClient`, `mlflow.entities`, `mlflow.data`).
"""

from __future__ import annotations

import getpass
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import mlflow.data.sources
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from gdpipe.core import progress
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError, Terminated, signals_held
from gdpipe.track.record import RunRecord, now_ms
from gdpipe.track.registry import model_name, register
from gdpipe.track.store import (
    STORE_ERRORS,
    first_line,
    half_built,
    remove_store,
    retried_if_raced,
    sqlite_file,
    store_failure,
    store_lock,
    wait_until_free,
)
from gdpipe.track.where import redact

FINGERPRINT_TAG = "gdpipe.fingerprint"
HEARTBEAT_TAG = "gdpipe.heartbeat"  # a RUNNING run's last sign of life (ms since the epoch), gone once FINISHED
HEARTBEAT_S = 1.0  # how often a publisher beats, at most (between two store calls)
ABANDONED_AFTER_S = 60  # default no-progress time after which a RUNNING run is abandoned (GDPIPE_ABANDONED_AFTER)
CONFIRM_S = 5.0  # how long a beat that looks old by this machine's clock must be seen standing still
POLL_S = 0.5  # how often a publisher that waits for another one looks again
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

    Exactly once, whatever the number of publishers of the same result at the same time (`_publish_once`).
    Returns variant -> {run_id, experiment_id, tracking_uri, created, abandoned_runs_killed,
    fingerprint, status, model_name, model_version}; abandoned_runs_killed are the runs that dead
    publishers had left RUNNING, marked KILLED on the way.
    """
    mlflow.set_tracking_uri(uri)  # for the fluent calls
    published = {}
    with store_lock(uri) as alone:
        wait_until_free(uri)
        client, experiment_id = _open(experiment, uri)
        for record in records:
            name = model_name(model_prefix, record.variant)
            try:
                run_id, version, created, abandoned = _publish_once(client, experiment_id, record, dataset, name, alone)
            except STORE_ERRORS as err:  # the store went away or refused mid-way: one line, no traceback
                what = f"publishing {record.variant}{_notes(err)}"
                raise store_failure(err, uri, what) from None
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


def abandoned_after() -> float:
    """Seconds without progress after which another publisher's RUNNING run counts as abandoned."""
    setting = os.environ.get("GDPIPE_ABANDONED_AFTER", str(ABANDONED_AFTER_S))
    try:
        seconds = float(setting)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InputError(f"GDPIPE_ABANDONED_AFTER={setting!r}: must be a number of seconds above 0 (default 60)")
    return seconds


def _publish_once(
    client: MlflowClient, experiment_id: str, record: RunRecord, dataset: Dataset, name: str, alone: bool
) -> tuple[str, str | None, bool, list[str]]:
    """The one FINISHED run of the record (made now, or found), and its model version, however many publish it.

    The store has no unique key for a run, so a publisher claims the result: it creates its RUNNING run,
    then looks. Alone (no FINISHED run of the fingerprint, no other live RUNNING one), it goes on and
    completes it; otherwise it deletes its claim, and waits or tries again a random moment later. Two
    claims cannot both go on: the later one's look comes after the earlier one's claim, and sees it.
    A RUNNING run whose publisher died is taken for abandoned (`_Watch`) and marked KILLED. `alone`: no
    other publisher can be writing (the sqlite store's lock is held), so every RUNNING gdpipe run of the
    variant is abandoned. Returns (run id, model version, created, ids of the abandoned runs killed).
    """
    watch, killed, tries = _Watch(alone), [], 0
    claim: str | None = None  # the id of our RUNNING run, once made
    try:
        while True:
            with signals_held():
                winner = _finished_run(client, experiment_id, record)
                running = _running_runs(client, experiment_id, record, alone)
            if winner is not None:
                if claim is not None:
                    with signals_held():
                        client.delete_run(claim)  # a claim that lost goes, and nothing of it is shown
                        claim = None
                return winner, register(client, experiment_id, winner, record, name), False, killed
            others = [run for run in running if run.info.run_id != claim]
            for run in others:
                if watch.abandoned(run):
                    with signals_held():
                        client.set_terminated(run.info.run_id, "KILLED")
                    killed.append(run.info.run_id)
            live = [run for run in others if run.info.run_id not in killed]
            if live and claim is not None:  # another live claim beside ours: both step back, try again at random
                with signals_held():
                    client.delete_run(claim)
                    claim = None
                tries += 1
                time.sleep(random.uniform(0, min(2.0, 0.1 * 2**tries)))
            elif live:  # another publisher is at it: wait for its run to finish, or to be abandoned
                time.sleep(POLL_S)
            elif claim is None:
                with signals_held():  # a stop that comes while the run is made lands once its id is known
                    claim = _claim(client, experiment_id, record)
                # then look again: only a look after the claim can tell whether it is alone
            else:
                completed, version = _complete(client, experiment_id, claim, record, dataset, name)
                if completed:
                    return claim, version, True, killed
                claim = None  # another publisher took ours for abandoned: its run, or a new claim, wins
    except BaseException as err:
        if claim is not None:
            _end_after(err, client, claim, record)
        raise


def _end_after(err: BaseException, client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """Never leave a run RUNNING after an exception: Ctrl-C or kill marks it KILLED, any other failure
    FAILED, and a note on the exception says which (it becomes part of the line the stage prints)."""
    status = "KILLED" if isinstance(err, KeyboardInterrupt | Terminated) else "FAILED"
    note = f"{record.variant} run {run_id} marked {status}"
    try:
        with signals_held():
            client.set_terminated(run_id, status)
    except Exception as status_err:
        note = f"{record.variant} run {run_id} could not be marked {status} and stays RUNNING"
        note += f" ({first_line(status_err, client.tracking_uri)})"
    except BaseException as stop:  # a stop held while marking: it wins, and says what was done
        stop.add_note(note)
        raise
    err.add_note(note)


class _Watch:
    """Tells a live publisher's RUNNING run from one whose publisher died (SIGKILL, lost connection, server crash).

    A live publisher beats: its run's HEARTBEAT_TAG gets the time every HEARTBEAT_S while it works. A
    run is abandoned once its beat has not moved for `abandoned_after()` seconds: by the beat's own
    time when this machine's clock agrees (checked by watching it stand still for CONFIRM_S), else
    by watching it for that long, so that a skewed clock delays healing but never kills a live run.
    """

    def __init__(self, alone: bool):
        self.alone, self.after = alone, abandoned_after()
        self.seen: dict[str, tuple[str, float]] = {}  # run id -> (its beat, when first seen with that beat)

    def abandoned(self, run: Run) -> bool:
        if self.alone:
            return True
        beat = run.data.tags.get(HEARTBEAT_TAG, "")
        seen_beat, since = self.seen.get(run.info.run_id, (None, time.monotonic()))
        if beat != seen_beat:
            self.seen[run.info.run_id] = (beat, time.monotonic())
            return False
        watched = time.monotonic() - since
        age = time.time() - int(beat) / 1000 if beat.isdigit() else math.inf
        return watched >= self.after or (watched >= min(CONFIRM_S, self.after) and age >= self.after)


def _finished_run(client: MlflowClient, experiment_id: str, record: RunRecord) -> str | None:
    """The id of the record's FINISHED run; the oldest, if an older gdpipe made more than one."""
    finished = f"tags.`{FINGERPRINT_TAG}` = '{record.fingerprint}' and attributes.status = 'FINISHED'"
    found = client.search_runs(
        [experiment_id], filter_string=finished, max_results=1, order_by=["attributes.start_time ASC"]
    )
    return found[0].info.run_id if found else None


def _running_runs(client: MlflowClient, experiment_id: str, record: RunRecord, alone: bool) -> list[Run]:
    """RUNNING runs of the record; when `alone`, every RUNNING gdpipe run of its variant (all are abandoned)."""
    ours = f"tags.variant = '{record.variant}' and tags.`{FINGERPRINT_TAG}` LIKE '%'"
    mine = ours if alone else f"tags.`{FINGERPRINT_TAG}` = '{record.fingerprint}'"
    return client.search_runs([experiment_id], filter_string=f"{mine} and attributes.status = 'RUNNING'")


def _claim(client: MlflowClient, experiment_id: str, record: RunRecord) -> str:
    """A RUNNING run of the record, with its first beat: the claim to publish it."""
    tags = record.tags | {FINGERPRINT_TAG: record.fingerprint, HEARTBEAT_TAG: str(now_ms())}
    return client.create_run(
        experiment_id, start_time=record.started_ms or now_ms(), tags=tags, run_name=record.name
    ).info.run_id


def _complete(
    client: MlflowClient, experiment_id: str, run_id: str, record: RunRecord, dataset: Dataset, name: str
) -> tuple[bool, str | None]:
    """Log everything of the record into its claimed run, register its model, then mark it FINISHED.

    Returns (completed, model version); not completed when another publisher took the run for
    abandoned meanwhile (a call that stalled for longer than `abandoned_after()`): it is left as it is.
    The version is made before the run is FINISHED, so whoever finds the run finds its version too.
    Each call to the store holds Ctrl-C and kill until it returns (`signals_held`), so a stop lands
    between calls, never inside a store's transaction.
    """
    beat = _Heartbeat(client, run_id)
    with signals_held():
        client.log_batch(run_id, params=[Param(key, str(value)) for key, value in record.params.items()])
    # The model before the metrics: log_model reads back the whole history of every metric the run
    # already has (to link those of its step to the model), 20,000 points for 10,000 epochs.
    with signals_held():
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
    beat()
    log_metrics(client, run_id, record, beat)
    for path in record.artifacts:
        with signals_held():
            client.log_artifact(run_id, str(path))
        beat()
    with signals_held():
        if client.get_run(run_id).info.status != "RUNNING":
            return False, None
    version = register(client, experiment_id, run_id, record, name)
    with signals_held():
        client.delete_tag(run_id, HEARTBEAT_TAG)
        client.set_terminated(run_id, "FINISHED", end_time=record.finished_ms or now_ms())
    return True, version


class _Heartbeat:
    """Call between store calls: every HEARTBEAT_S, the run's HEARTBEAT_TAG gets the time (`_Watch` reads it)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id, self.last = client, run_id, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= HEARTBEAT_S:
            with signals_held():
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(now_ms()))
            self.last = time.monotonic()


def _open(name: str, uri: str) -> tuple[MlflowClient, str]:
    """A client of the store and the experiment's id, created on first use with its artifacts inside the store.

    Called under `store_lock`: making the client makes a sqlite store's tables the first time, and
    two processes doing that at once break it ("duplicate column name"). A sqlite store half-built
    by an interrupted first setup (a kill, a full disk), which MLflow cannot open, is made anew.
    """
    database = sqlite_file(uri)
    try:
        if database is not None and database.exists() and half_built(database):
            remove_store(database)
        return _open_experiment(name, uri)
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None


def _open_experiment(name: str, uri: str) -> tuple[MlflowClient, str]:
    """Publishers of a server may all create the experiment at once: those that lose the race use the winner's."""
    with signals_held():
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            database = sqlite_file(uri)
            location = (database.parent / "artifacts").as_uri() if database else None
            try:
                return client, client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if found.tags.get(key) != value:
                retried_if_raced(client.set_experiment_tag, found.experiment_id, key, value)
        return client, found.experiment_id


def _notes(err: BaseException) -> str:
    return "".join(f"; {note}" for note in getattr(err, "__notes__", ()))


def log_metrics(client: MlflowClient, run_id: str, record: RunRecord, beat: Callable[[], None] = lambda: None) -> None:
    """Log the record's metrics in batches of MLflow's maximum size, with a progress bar on a terminal.

    `beat` is called after each batch (a `_Heartbeat`)."""

    metrics = _metrics(record)
    with progress.bar(len(metrics), f"publish {record.variant}", "metric") as bar:
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            batch = metrics[start : start + METRICS_PER_BATCH]
            with signals_held():
                client.log_batch(run_id, metrics=batch)
            bar.update(len(batch))
            beat()


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
