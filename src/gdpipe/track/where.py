"""Where the MLflow store is, how to name it without its secrets, and whether it holds the current result.

    python -m gdpipe.track.where publish   # make's pipeline: the current result into the store named now
    python -m gdpipe.track.where show      # make repro's last line: which store holds the runs, how to see them

DVC reruns `track` when the result changes, not when MLFLOW_TRACKING_URI names another store: the
store is no dependency, or the committed dvc.lock would change with each user's server. `track`
records in runs.json which store it published to; when that is not the store named now, or runs.json
is of another result or missing, `publish` reruns `track` through DVC (which finds or makes the runs
there, and leaves dvc.lock as it was). No MLflow here: an up-to-date `make repro` imports none.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

from gdpipe.core import store_uri
from gdpipe.core.command import InputError, run_command
from gdpipe.core.files import read_json
from gdpipe.core.store_uri import redact

TRACK_AGAIN = ["repro", "--single-item", "--force", "track"]  # only track; dvc.lock stays as it is
VIEW = "#/experiments/{}?workflowType=machine_learning"  # the UI's model-training view of the experiment


def default_uri(root: Path) -> str:
    """The embedded sqlite store of the repository `root`: `root`/mlruns/mlflow.db."""
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a team's server), else the embedded sqlite store in `root`/mlruns.

    One that cannot be parsed is an InputError without its secrets, before MLflow prints it in a traceback.
    """
    uri = os.environ.get(store_uri.VARIABLE)
    try:
        store_uri.check(uri)
    except ValueError as err:
        raise InputError(str(err)) from None
    return uri or default_uri(root)


def repo_root() -> Path:
    """The real repository: DVC_ROOT under DVC (which names the main repo also for queued runs), else here."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def not_current(runs_path: Path, published_path: Path, uri: str) -> str | None:
    """Why runs.json does not name the runs of the current result (published.json) in the store `uri`, or None."""
    published = read_json(published_path)
    if not runs_path.exists():
        return f"{runs_path} is missing"
    try:
        runs = read_json(runs_path)
    except InputError as err:
        return str(err)
    if not isinstance(published, dict) or not all(isinstance(entry, dict) for entry in published.values()):
        return f"{published_path}: not written by the track stage"
    entries = runs.values() if isinstance(runs, dict) else ()
    if not entries or not all(isinstance(run, dict) and "model_version" in run for run in entries):
        return f"{runs_path}: not written by this version of the track stage"
    current = {variant: entry.get("fingerprint") for variant, entry in published.items()}
    if {variant: run.get("fingerprint") for variant, run in runs.items()} != current:
        return f"{runs_path} is not of the current result ({published_path})"
    stores = sorted({redact(str(run.get("tracking_uri"))) for run in entries})
    if stores != [redact(uri)]:
        return f"{runs_path}: the runs are in {', '.join(stores)}, not in {redact(uri)}"
    return None


def publish(runs_path: Path, published_path: Path, uri: str) -> None:
    """Rerun `track` through DVC when the store named now lacks the current result; else do nothing, at once."""
    reason = not_current(runs_path, published_path, uri)
    if reason is None:
        return
    dvc = Path(sys.executable).with_name("dvc")  # this venv's, a dependency of gdpipe
    print(f"{reason}: publishing the current result there (dvc {' '.join(TRACK_AGAIN)})", flush=True)
    os.execv(dvc, [str(dvc), *TRACK_AGAIN])


def show(runs_path: Path, published_path: Path, uri: str, ui: str) -> str:
    """The line that names the store holding the current result's runs, and how to see them."""
    reason = not_current(runs_path, published_path, uri)
    if reason is not None:
        raise InputError(f"{reason}: run make repro, which publishes the current result there")
    experiment = next(iter(read_json(runs_path).values()))["experiment_id"]
    name = redact(uri)
    if urlsplit(uri).scheme in ("http", "https"):  # a server has its own UI
        return f"Both runs are in MLflow at {name}: open {name.rstrip('/')}/{VIEW.format(experiment)}"
    store = "" if uri == default_uri(repo_root()) else f" STORE={shlex.quote(name)}"
    return f"Both runs are in MLflow at {name}: make ui{store}, then open {ui}/{VIEW.format(experiment)}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["publish", "show"])
    parser.add_argument("--runs", default="runs.json", help="what track published, and where (git-ignored)")
    parser.add_argument("--published", default="published.json", help="the current result's fingerprints")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="where make ui serves (for show)")
    args = parser.parse_args(argv)
    uri = tracking_uri(repo_root())
    if args.command == "publish":
        publish(Path(args.runs), Path(args.published), uri)
    else:
        print(show(Path(args.runs), Path(args.published), uri, args.ui))


if __name__ == "__main__":
    run_command(main)
