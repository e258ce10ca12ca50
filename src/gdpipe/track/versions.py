"""Model versions: each published result's model is a version of `<track.model_name>-<variant>`, made
once however often the result is published, and the alias `challenger` names the version of the result
published last, unless training diverged."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gdpipe.track.record import RunRecord
from gdpipe.track.store import retried_if_raced

CHALLENGER = "challenger"


def model_name(prefix: str, variant: str) -> str:
    """The registered model of one variant: gdpipe-numpy, gdpipe-torch."""
    return f"{prefix}-{variant}"


def register(client: MlflowClient, experiment_id: str, run_id: str, record: RunRecord, name: str) -> str | None:
    """The version of this run's model, made the first time (one result, one run, one version), and
    named `challenger` unless training diverged. None when training left no model."""
    if not record.has_model:
        return None
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        version = str(min(int(each.version) for each in found))
    else:
        version = _create_version(client, experiment_id, run_id, record, name)
    if not record.diverged:
        retried_if_raced(client.set_registered_model_alias, name, CHALLENGER, version)
    return version


def _create_version(client: MlflowClient, experiment_id: str, run_id: str, record: RunRecord, name: str) -> str:
    try:
        client.create_registered_model(name, description=f"f(x) = w·x fitted by gradient descent, {record.variant}")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    (model,) = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1)
    tags = {key: record.tags[key] for key in ("git.commit", "data.sha256", "gdpipe.status") if key in record.tags}
    tags |= {"run_id": run_id, "gdpipe.fingerprint": record.fingerprint}
    version = client.create_model_version(
        name, model.model_uri, run_id=run_id, tags=tags, description=describe(record), model_id=model.model_id
    )
    return str(version.version)


def describe(record: RunRecord) -> str:
    """What a version is, in one line: the variant, its lr and epochs, and f(x) (or where it diverged)."""
    params = record.params
    what = f"{record.variant}, lr {params['train.lr']:g}, {params['train.epochs']} epochs"
    if record.diverged:
        return f"{what}: diverged at epoch {record.tags['gdpipe.diverged_at_epoch']}, never promoted"
    w = float(record.history.w[-1])
    return f"{what}: f({params['evaluate.x']:g}) = {record.final_metrics['prediction']:.3f} (w = {w:.6f})"
