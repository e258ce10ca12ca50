"""The model registry: each published result's model is a version of `<track.model_name>-<variant>`;
the alias `challenger` names the version of the result published last, `champion` the one the
quality gate let through.

    python -m gdpipe.track.registry promote   # make promote: champion -> this result, if the gate passed
    python -m gdpipe.track.registry serve     # make serve: mlflow models serve the champion

The gate never talks to MLflow: it writes its verdict (reports/check.json), and `promote` reads it
with runs.json, which `track` wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from gdpipe.core import config
from gdpipe.core.command import InputError, run_command, signals_held
from gdpipe.core.files import file_sha256, read_json
from gdpipe.track.record import RunRecord
from gdpipe.track.store import STORE_ERRORS, retried_if_raced, store_failure
from gdpipe.track.where import not_current, redact, repo_root, tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"
EXIT_NOT_PROMOTED = 1


def model_name(prefix: str, variant: str) -> str:
    """The registered model of one variant: gdpipe-numpy, gdpipe-torch."""
    return f"{prefix}-{variant}"


def register(client: MlflowClient, experiment_id: str, run_id: str, record: RunRecord, name: str) -> str | None:
    """The version of this run's model, made the first time (one result, one run, one version), and
    named `challenger` unless training diverged. None when training left no model."""
    if not record.has_model:
        return None
    with signals_held():
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


# --- promote ---------------------------------------------------------------------------------


def promote(client: MlflowClient, current: Mapping[str, Mapping], verdict: Mapping) -> tuple[list[str], bool]:
    """Set `champion` on each variant's current version if the gate passed: one line per variant, and
    whether every one was promoted."""
    lines, promoted = [], True
    for variant, run in current.items():
        name, version = run["model_name"], run["model_version"]
        with signals_held():
            champion = _champion(client, name)
        if verdict["passed"] and version is not None and run.get("status") != "diverged":
            with signals_held():
                retried_if_raced(client.set_registered_model_alias, name, CHAMPION, version)
            was = "already" if champion == version else f"was {champion or 'none'}"
            lines.append(f"{name}: version {version} is champion ({was})")
            continue
        promoted = False
        # This variant's failed checks, and those of both (parity); all of them if none is its own.
        own = [check for check in verdict["failed"] if check.endswith((f"({variant})", "(both)"))]
        stays = f"version {champion} stays champion" if champion else "no version is champion"
        if version is None:
            why = "this result has no model to promote (it diverged before its first step)"
        elif not verdict["passed"]:
            why = f"version {version} was not promoted: the gate failed ({', '.join(own or verdict['failed'])})"
        else:
            why = f"version {version} was not promoted: it diverged"
        lines.append(f"{name}: {stays}; {why}")
    return lines, promoted


def _champion(client: MlflowClient, name: str) -> str | None:
    try:
        version: ModelVersion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return str(version.version)


def current_result(runs_path: Path, published_path: Path, uri: str) -> dict[str, dict]:
    """runs.json, checked to be of the result DVC last published (published.json) and of this store."""
    reason = not_current(runs_path, published_path, uri)
    if reason is not None:
        raise InputError(f"{reason}: run make promote, which publishes the current result there first")
    return read_json(runs_path)


def read_verdict(verdict_path: Path, metrics_path: Path) -> dict:
    """The gate's verdict, checked to be about this very metrics.json."""
    verdict = read_json(verdict_path)
    if not isinstance(verdict, dict) or {"passed", "failed", "metrics_sha256"} - set(verdict):
        raise InputError(f"{verdict_path}: not a verdict written by the gate; run make promote (it runs the gate)")
    if verdict["metrics_sha256"] != file_sha256(metrics_path):
        raise InputError(f"{verdict_path} is about another {metrics_path}; run make promote (it runs the gate first)")
    return verdict


# --- the command -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_promote = commands.add_parser("promote", help="champion -> the current result's versions, if the gate passed")
    to_promote.add_argument("--runs", default="runs.json")
    to_promote.add_argument("--published", default="published.json")
    to_promote.add_argument("--verdict", default="reports/check.json")
    to_promote.add_argument("--metrics", default="metrics.json")
    to_serve = commands.add_parser("serve", help="serve a variant's champion over HTTP with mlflow models serve")
    to_serve.add_argument("--params", default="params.yaml")
    to_serve.add_argument("--variant", default="torch", choices=config.VARIANTS)
    to_serve.add_argument("--host", default="127.0.0.1")
    to_serve.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)

    uri = tracking_uri(repo_root())
    client = MlflowClient(uri)
    try:
        if args.command == "promote":
            runs = current_result(Path(args.runs), Path(args.published), uri)
            lines, promoted = promote(client, runs, read_verdict(Path(args.verdict), Path(args.metrics)))
            print("\n".join(lines))
            return 0 if promoted else EXIT_NOT_PROMOTED
        name = model_name(config.load(args.params).track.model_name, args.variant)
        with signals_held():
            champion = _champion(client, name)
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None
    if champion is None:
        raise InputError(f"{name} has no champion in {redact(uri)}: run make promote first")
    serve(f"models:/{name}@{CHAMPION}", uri, args.host, args.port)


def serve(model_uri: str, uri: str, host: str, port: int) -> None:
    """Become `mlflow models serve` for the model, in this venv (no new environment), on host:port."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))  # this venv's, a dependency of gdpipe
    print(f'serving {model_uri} on http://{host}:{port} (POST /invocations with {{"inputs": [5.0]}})', flush=True)
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    command = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port)]
    os.execve(mlflow, command, env)


if __name__ == "__main__":
    run_command(main)
