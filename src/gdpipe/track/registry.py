"""The model registry's commands: promote the current result to champion, and serve the champion.

    python -m gdpipe.track.registry promote   # make promote: champion -> this result, if the gate passed
    python -m gdpipe.track.registry serve     # make serve: the champion over HTTP, behind a request guard

Each published result's model is a version of `<track.model_name>-<variant>` (versions.py); the alias
`challenger` names the version of the result published last, `champion` the one the quality gate let
through: both variants' versions of one result, which a record names (champion.py). The gate never talks
to MLflow: it writes its verdict (reports/check.json), and `promote` reads it with runs.json, which
`track` wrote. MLflow is imported once its settings are made (settings.apply) and the arguments checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gdpipe.core import config
from gdpipe.core.command import InputError, run_command, signals_held
from gdpipe.core.files import file_sha256, read_json
from gdpipe.track import settings
from gdpipe.track.where import not_current, redact, repo_root, tracking_uri

EXIT_NOT_PROMOTED = 1
SERVE_CONNECTIONS = 16


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
    settings.apply()
    from mlflow import MlflowClient

    from gdpipe.track import champion
    from gdpipe.track.failures import STORE_ERRORS, store_failure
    from gdpipe.track.versions import model_name

    client = MlflowClient(uri)
    # Each call to the store is let finish, so a sqlite store is never left locked half-way: a stop lands
    # once the promotion has said what it did, or once the champion to serve is known.
    with signals_held():
        try:
            if args.command == "promote":
                runs = current_result(Path(args.runs), Path(args.published), uri)
                lines, promoted = champion.promote(client, runs, read_verdict(Path(args.verdict), Path(args.metrics)))
                print("\n".join(lines))
                return 0 if promoted else EXIT_NOT_PROMOTED
            prefix = config.load(args.params).track.model_name
            names = [model_name(prefix, variant) for variant in config.VARIANTS]
            record, held = champion.champion_result(client, names), champion.aliases(client, names)
        except STORE_ERRORS as err:
            raise store_failure(err, uri) from None
    name = model_name(prefix, args.variant)
    version = champion.servable(name, record, held, redact(uri))
    serve(f"models:/{name}/{version}", f"{name}@{champion.CHAMPION}", uri, args.host, args.port, args.max_bytes)


def serve(model_uri: str, alias: str, uri: str, host: str, port: int, max_bytes: int) -> None:
    """Serve the model with MLflow's scoring app (what `mlflow models serve` runs) behind gdpipe's
    request guard, in this process, on host:port, until stopped.

    The version is named, not the alias: a promotion after the check must not change what is served."""
    import mlflow
    import uvicorn
    from mlflow.pyfunc import load_model, scoring_server

    from gdpipe.request_guard import RequestGuard
    from gdpipe.track.failures import STORE_ERRORS, store_failure

    mlflow.set_tracking_uri(uri)
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
