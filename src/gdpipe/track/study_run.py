"""make tune's parent run: one MLflow run per Optuna study, in the study's experiment, whose children are the
trials' runs (MLflow's public `mlflow.parentRunId` tag, set by the track stage: record.lineage_tags).

The worker that made the study makes the run (search.open_study: the storage's unique study name elects it)
and records its id in the study; the others read it there. It stays RUNNING while the study runs; the worker
that sees the study complete logs the picture and the best trial, and marks it FINISHED.
"""

from __future__ import annotations

from pathlib import Path

from gdpipe.track.failures import STORE_ERRORS, store_failure
from gdpipe.track.store import open_experiment, store_lock

STUDY_TAG = "gdpipe.tune.study"


def check(uri: str, experiment: str) -> None:
    """The store answers and takes these credentials (the experiment is made the first time): before any trial
    runs, and before this worker can make a study whose parent run it then could not make."""
    with store_lock(uri):
        open_experiment(experiment, uri)  # its failures are one line already


def create(uri: str, experiment: str, study: str, params: dict[str, object]) -> str:
    """A new RUNNING parent run for `study` in `experiment`, with the search's params; its id."""
    try:
        with store_lock(uri):
            client, experiment_id = open_experiment(experiment, uri)
            run = client.create_run(experiment_id, run_name=f"study {study}", tags={STUDY_TAG: study})
            client.log_batch(run.info.run_id, params=_params(params))
    except STORE_ERRORS as err:
        raise store_failure(err, uri, f"making the parent run of study {study!r}") from None
    return run.info.run_id


def finish(uri: str, run_id: str, picture: Path, best: dict[str, float]) -> None:
    """The picture and the best trial's numbers in the parent run, then FINISHED (again, by a late worker: the same)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from gdpipe.track.record import now_ms

    try:
        with store_lock(uri):
            client = MlflowClient(uri)
            if client.get_run(run_id).info.status == "FINISHED":  # another worker saw the study complete first
                return
            client.log_artifact(run_id, str(picture))
            stamp = now_ms()
            client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in best.items()])
            client.set_terminated(run_id, "FINISHED")
    except STORE_ERRORS as err:
        raise store_failure(err, uri, f"finishing the parent run {run_id}") from None


def _params(params: dict[str, object]):
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in params.items()]
