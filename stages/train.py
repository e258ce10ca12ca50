"""train: fit w by gradient descent with one variant (numpy: hand gradient, torch: autograd).

    python stages/train.py --variant numpy --params params.yaml --data data/dataset.npz \
        --history history/numpy.csv --model models/numpy.json
"""

import argparse
import sys
import time

from gdpipe import config, data, training
from gdpipe.errors import run_command
from gdpipe.history import write_timing
from gdpipe.model import TrainedModel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=config.VARIANTS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="the .npz written by generate")
    parser.add_argument("--history", required=True, help="the CSV to write: epoch,w,loss")
    parser.add_argument("--model", required=True, help="the JSON to write: the final w")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    dataset = data.load(args.data)
    train = training.trainer_for(args.variant, dataset.x.nbytes)  # imports torch before the clock starts
    started_ms = time.time_ns() // 1_000_000
    history = train(dataset, params.train)
    finished_ms = time.time_ns() // 1_000_000
    history.write_csv(args.history)
    TrainedModel.from_history(args.variant, history).save(args.model)
    write_timing(args.history, started_ms, finished_ms)  # for MLflow only: times stay out of DVC's outputs
    if history.diverged_at:
        # Recorded, not fatal: a learning-rate sweep should still show this run; the gate rejects it.
        print(f"gdpipe: warning: {training.divergence_note(args.variant, history, dataset, params.train, params.data.x_layout)}", file=sys.stderr)


if __name__ == "__main__":
    run_command(main)
