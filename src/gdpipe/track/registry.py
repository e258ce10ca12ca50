"""The model registry: each published result's model is a version of `<track.model_name>-<variant>`;
the alias `challenger` names the version of the result published last, `champion` the one the
quality gate let through: both variants' versions of one result, which a record names (see promote).

    python -m gdpipe.track.registry promote   # make promote: champion -> this result, if the gate passed
    python -m gdpipe.track.registry serve     # make serve: the champion over HTTP, behind a request guard

The gate never talks to MLflow: it writes its verdict (reports/check.json), and `promote` reads it
with runs.json, which `track` wrote.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from gdpipe.core import config
from gdpipe.core.command import InputError, run_command, signals_held
from gdpipe.core.files import file_sha256, read_json
from gdpipe.track.failures import STORE_ERRORS, store_failure
from gdpipe.track.record import RunRecord
from gdpipe.track.store import retried_if_raced
from gdpipe.track.where import not_current, redact, repo_root, tracking_uri

CHALLENGER, CHAMPION = "challenger", "champion"
EXIT_NOT_PROMOTED = 1
SERVE_CONNECTIONS = 16


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
#
# MLflow has no transaction across two registered models, so a result's pair of champions is made one
# record and two aliases that follow it:
#   1. The promoter writes the record: the tag CHAMPION_TAG of the first variant's registered model
#      names the versions of its result ({"gdpipe-numpy": "3", "gdpipe-torch": "3"}). The last one
#      written is the champion result, whatever the number of promoters at once.
#   2. It then settles: it reads the record and the aliases; where they differ, it points each alias at
#      the record's version and looks again, until a look finds the record unchanged and the aliases on it.
#   3. It says what that look found: its own result, or the one another promoter wrote after it.
# The aliases end on the record: the last write of an alias comes after the last write of the record
# (whose promoter settles after it), and a promoter whose alias writes followed a record it read before
# that write sees the new record on its next look and writes again. A promoter stopped half-way leaves
# a record the aliases do not follow: `make serve` refuses it, and the next promotion settles it.

CHAMPION_TAG = "gdpipe.champion"
SETTLE_TRIES = 50  # looks before giving up: each further one means another promoter wrote in between

Pair = dict[str, str]  # registered model name -> version


def promote(client: MlflowClient, current: Mapping[str, Mapping], verdict: Mapping) -> tuple[list[str], bool]:
    """Make the current result champion, all its variants or none, if the gate passed: one line per
    variant saying what the registry holds at the end, and whether this result is champion."""
    ours = {run["model_name"]: run["model_version"] for run in current.values()}
    refused = _refusals(current, verdict)
    if refused:
        held = settle(client, list(ours)) or aliases(client, list(ours))  # no record: an older gdpipe's aliases
        lines = []
        for variant, run in current.items():
            champion = held.get(run["model_name"])
            stays = f"version {champion} stays champion" if champion else "no version is champion"
            lines.append(f"{run['model_name']}: {stays}; {refused[variant]}")
        return lines, False
    was = champion_result(client, list(ours)) or aliases(client, list(ours))
    with signals_held():
        retried_if_raced(client.set_registered_model_tag, _holder(ours), CHAMPION_TAG, _encode(ours))
    now = settle(client, list(ours))
    if now == ours:
        lines = []
        for name, version in ours.items():
            before = "already" if was.get(name) == version else f"was {was.get(name) or 'none'}"
            lines.append(f"{name}: version {version} is champion ({before})")
        return lines, True
    return [
        f"{name}: version {now[name]} is champion (another promotion at the same time won); "
        f"version {version} was promoted, then replaced"
        for name, version in ours.items()
    ], False


def _refusals(current: Mapping[str, Mapping], verdict: Mapping) -> dict[str, str]:
    """Why each variant's version is not promoted, or nothing when the whole result is."""
    unfit = sorted(v for v, run in current.items() if run["model_version"] is None or run.get("status") == "diverged")
    if verdict["passed"] and not unfit:
        return {}
    refused = {}
    for variant, run in current.items():
        version = run["model_version"]
        if version is None:
            refused[variant] = "this result has no model to promote (it diverged before its first step)"
        elif not verdict["passed"]:
            # This variant's failed checks, and those of both (parity); all of them if none is its own.
            own = [check for check in verdict["failed"] if check.endswith((f"({variant})", "(both)"))]
            refused[variant] = (
                f"version {version} was not promoted: the gate failed ({', '.join(own or verdict['failed'])})"
            )
        elif variant in unfit:
            refused[variant] = f"version {version} was not promoted: it diverged"
        else:
            refused[variant] = (
                f"version {version} was not promoted: a result is promoted whole, and {', '.join(unfit)} cannot be"
            )
    return refused


def settle(client: MlflowClient, names: list[str]) -> Pair | None:
    """Point every alias `champion` at the version the champion record names, until one look finds the record
    unchanged and the aliases on it: the champion result. None when no record was ever written."""
    for _ in range(SETTLE_TRIES):
        record = champion_result(client, names)
        if record is None:
            return None
        if aliases(client, list(record)) == record and champion_result(client, names) == record:
            return record
        for name, version in record.items():
            with signals_held():
                retried_if_raced(client.set_registered_model_alias, name, CHAMPION, version)
    raise InputError(
        f"the champion of {', '.join(names)} kept changing while {SETTLE_TRIES} looks were taken "
        "(other promotions at the same time): run make promote again"
    )


def champion_result(client: MlflowClient, names: list[str]) -> Pair | None:
    """The versions the champion record names (model name -> version); None if there is none."""
    try:
        with signals_held():
            tags = client.get_registered_model(_holder(names)).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    try:
        record = json.loads(tags.get(CHAMPION_TAG, "null"))
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        return None  # not written by gdpipe: as if none
    return record


def aliases(client: MlflowClient, names: list[str]) -> dict[str, str | None]:
    """Each model's version named `champion`, or None."""
    return {name: _champion(client, name) for name in names}


def _holder(names) -> str:
    """The registered model that holds the champion record: the first name, the same for every promoter."""
    return min(names)


def _encode(pair: Pair) -> str:
    return json.dumps(pair, sort_keys=True, separators=(", ", ": "))


def _champion(client: MlflowClient, name: str) -> str | None:
    try:
        with signals_held():
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
    to_serve = commands.add_parser("serve", help="serve a variant's champion over HTTP, behind the request guard")
    to_serve.add_argument("--params", default="params.yaml")
    to_serve.add_argument("--variant", default="torch", choices=config.VARIANTS)
    to_serve.add_argument("--host", default="127.0.0.1")
    to_serve.add_argument("--port", type=int, default=5001)
    to_serve.add_argument("--max-bytes", type=int, default=4_000_000, help="the largest request body")
    args = parser.parse_args(argv)
    if args.command == "serve" and args.max_bytes <= 0:
        raise InputError(f"SERVE_MAX_BYTES must be a positive number of bytes, got {args.max_bytes}")

    uri = tracking_uri(repo_root())
    client = MlflowClient(uri)
    try:
        if args.command == "promote":
            runs = current_result(Path(args.runs), Path(args.published), uri)
            lines, promoted = promote(client, runs, read_verdict(Path(args.verdict), Path(args.metrics)))
            print("\n".join(lines))
            return 0 if promoted else EXIT_NOT_PROMOTED
        prefix = config.load(args.params).track.model_name
        names = [model_name(prefix, variant) for variant in config.VARIANTS]
        record, held = champion_result(client, names), aliases(client, names)
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None
    name = model_name(prefix, args.variant)
    version = _servable(name, record, held, redact(uri))
    mlflow.set_tracking_uri(uri)
    serve(f"models:/{name}/{version}", f"{name}@{CHAMPION}", uri, args.host, args.port, args.max_bytes)


def _servable(name: str, record: Pair | None, held: dict[str, str | None], where: str) -> str:
    """The champion version of `name`, if every variant's champion is of the champion result; else InputError."""
    if record is None and held.get(name) is None:
        raise InputError(f"{name} has no champion in {where}: run make promote first")
    if record is None:
        raise InputError(
            f"{name}@{CHAMPION} in {where} was set by an older gdpipe, which kept no record of the champion "
            "result: run make promote (it records it), then make serve"
        )
    if held != record:
        now = ", ".join(f"{model}@{CHAMPION} is version {version or 'none'}" for model, version in held.items())
        result = ", ".join(f"{model} {version}" for model, version in record.items())
        raise InputError(
            f"the champions in {where} are not of one result ({now}; the champion result is {result}): a "
            "promotion is under way or was stopped half-way; wait for it, or run make promote, then make serve"
        )
    return record[name]


def serve(model_uri: str, alias: str, uri: str, host: str, port: int, max_bytes: int) -> None:
    """Serve the model with MLflow's scoring app (what `mlflow models serve` runs) behind gdpipe's
    request guard, in this process, on host:port, until stopped.

    The version is named, not the alias: a promotion after the check must not change what is served."""
    import uvicorn
    from mlflow.pyfunc import load_model, scoring_server

    from gdpipe.request_guard import RequestGuard

    try:
        model = load_model(model_uri)
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None
    # MLflow's app as `mlflow models serve` builds it (mlflow/pyfunc/scoring_server/app.py calls the same
    # init); that command has no setting for a body limit or for its error answers, so gdpipe serves the
    # app itself, with the server that command uses. limit_concurrency: more open requests get 503, so
    # at most SERVE_CONNECTIONS bodies of max_bytes are held at once.
    app = RequestGuard(scoring_server.init(model), max_bytes)
    post = 'POST /invocations with {"inputs": [5.0]}'
    print(f"serving {model_uri} ({alias}) on http://{host}:{port} ({post}; bodies up to {max_bytes:,} bytes)")
    uvicorn.run(app, host=host, port=port, limit_concurrency=SERVE_CONNECTIONS, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    run_command(main)
