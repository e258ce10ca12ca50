"""track: publish each trained variant as one MLflow run (the only stage that imports mlflow).

    python stages/track.py --params params.yaml --data data/dataset.npy \
        --histories history/numpy.csv history/torch.csv --models models/numpy.json models/torch.json \
        --metrics metrics.json --plot plots/curves.png --published published.json --runs runs.json
"""

import argparse
import atexit
import gc
from pathlib import Path

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset, train_outputs
from gdpipe.core.command import run_command
from gdpipe.core.files import read_json, write_json
from gdpipe.track import settings
from gdpipe.track.environment import environment
from gdpipe.track.record import build_record, lineage_tags
from gdpipe.track.where import repo_root, tracking_uri

TRACKED = ("data", "train", "evaluate", "track")  # the params dvc.yaml declares for this stage


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True)
    parser.add_argument("--histories", nargs="+", required=True, help="history/<variant>.csv, one per variant")
    parser.add_argument("--models", nargs="+", required=True, help="models/<variant>.json, one per variant")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plot", required=True, help="the curves PNG, logged with every run")
    parser.add_argument(
        "--published", required=True, help="variant -> fingerprint of its run (deterministic: a DVC output)"
    )
    parser.add_argument("--runs", required=True, help="variant -> run id and tracking URI (not a DVC output)")
    parser.add_argument("--lock", default="dvc.lock", help="the params DVC recorded for the earlier stages")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    metrics = read_json(args.metrics)
    # The software this stage runs with, which trained the result when one dvc repro did both (make reproduce
    # names it when a rebuild differs): tags of the run, never part of an output.
    lineage = lineage_tags(Path.cwd()) | environment()
    records = [
        build_record(
            params,
            metrics,
            Path(args.data),
            variant,
            history,
            model,
            Path(args.metrics),
            (Path(args.plot), Path(args.params)),
            lineage,
        )
        for variant, (model, history) in train_outputs(args.models, args.histories).items()
    ]
    # Publishing cannot be undone: the params must still be the ones read above, the ones DVC recorded
    # for every stage before this one (no edit since they ran) and, build_record checked, the ones
    # each model was trained with.
    config.check_unchanged(args.params, params, TRACKED)
    config.check_recorded(args.lock, args.params, params, skip=("track",))
    settings.apply()
    from gdpipe.track import publish  # only now: mlflow takes a second to import, bad input fails before it

    uri = tracking_uri(repo_root())
    published = publish.publish(records, Dataset.load(args.data), params.track.experiment, params.track.model_name, uri)
    write_json(args.runs, published)
    experiment = params.track.experiment
    write_json(
        args.published,
        {record.variant: {"fingerprint": record.fingerprint, "experiment": experiment} for record in records},
    )
    for variant, run in published.items():
        for run_id in run["abandoned_runs_killed"]:
            print(f"{variant}: run {run_id} was left RUNNING by a publisher that was killed; marked KILLED")
        found = "new run" if run["created"] else "already published as run"
        model = f"; model {run['model_name']} version {run['model_version']}" if run["model_version"] else ""
        print(f"{variant}: {found} {run['run_id']} ({experiment} at {run['tracking_uri']}){model}")
    config.check_unchanged(args.params, params, TRACKED)  # last: DVC reads params.yaml next


if __name__ == "__main__":
    # Measured on this stage (bench/README.md, "Collector on / off"): MLflow's imports, its store and its
    # migrations make so many objects that Python's collector (every 700) walks them again and again, 3.2 s
    # in all; collecting every 50,000 takes 2.75 s (off: 2.7 s, but a cycle made per item would pile up).
    # Frozen at exit, they leave the final collection nothing to walk (0.45 s): the outputs are closed by then.
    gc.set_threshold(50_000)
    atexit.register(gc.freeze)
    run_command(main)
