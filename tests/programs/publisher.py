"""A publisher that waits for GO to exist, then publishes the workspace's result once per learning rate given
(as if trained with it) to URI, printing variant -> [run id, created, model version] for each.

    python tests/programs/publisher.py WORKSPACE URI GO LR...
"""

import json
import os
import sys
import time
from pathlib import Path

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset
from gdpipe.core.files import read_json
from gdpipe.track import settings

settings.apply()  # before mlflow is imported

from gdpipe.track import publish  # noqa: E402
from gdpipe.track.record import build_record  # noqa: E402

workspace, uri, go, lrs = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), [float(lr) for lr in sys.argv[4:]]
params = config.load(workspace / "params.yaml")
metrics = read_json(workspace / "metrics.json")
dataset = Dataset.load(workspace / "data/dataset.npy")
while not go.exists():  # both workers start publishing at the same moment, on a store that does not exist yet
    time.sleep(0.005)


def model_trained_with(variant, lr):  # the workspace's model, as if trained with lr (build_record checks it)
    model = read_json(workspace / f"models/{variant}.json")
    model["trained_with"]["train.lr"] = lr
    # This worker's own file, as each `dvc exp` worker has its own copy of the workspace: a file both
    # wrote could be read half-rewritten by the other and hashed as another result.
    path = Path(go.parent / f"{go.name}-{os.getpid()}-{variant}-{lr}.json")
    path.write_text(json.dumps(model))
    return path


for lr in lrs:
    variant_params = params.model_copy(update={"train": params.train.model_copy(update={"lr": lr})})
    records = [
        build_record(
            variant_params,
            metrics,
            workspace / "data/dataset.npy",
            v,
            workspace / f"history/{v}.csv",
            model_trained_with(v, lr),
            workspace / "metrics.json",
            (workspace / "plots/curves.png",),
            {},
        )
        for v in ("numpy", "torch")
    ]
    published = publish.publish(records, dataset, "gradient-descent", "gdpipe", uri)
    lines = {v: [run["run_id"], run["created"], run["model_version"]] for v, run in published.items()}
    print(json.dumps(lines), flush=True)
