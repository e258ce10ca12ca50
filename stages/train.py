"""train: fit w by gradient descent with one variant (numpy: hand gradient, torch: autograd).

    python stages/train.py --variant numpy --params params.yaml --data data/dataset.npy \
        --history history/numpy.csv --model models/numpy.json
"""

import argparse
import sys
import time

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset, TrainedModel, write_timing
from gdpipe.core.command import run_command
from gdpipe.train import divergence_note, stepper_class, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=config.VARIANTS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="the .npy written by generate")
    parser.add_argument("--history", required=True, help="the CSV to write: epoch,w,loss")
    parser.add_argument("--model", required=True, help="the JSON to write: the final w")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    dataset = Dataset.load(args.data)
    stepper_class(args.variant, dataset.x.nbytes)  # imports torch now, so that the clock times training alone
    started_ms = time.time_ns() // 1_000_000
    history = train(args.variant, dataset, params.train)
    finished_ms = time.time_ns() // 1_000_000
    keys = config.training_keys(args.variant)
    history.write_csv(args.history)
    TrainedModel.from_history(args.variant, history, config.values(params, keys)).save(args.model)
    write_timing(args.history, started_ms, finished_ms)  # for MLflow only: times stay out of DVC's outputs
    config.check_unchanged(args.params, params, ("data.x_layout", *keys))  # last: DVC reads params.yaml next
    if history.diverged_at:
        # Recorded, not fatal: a learning-rate sweep should still show this run; the gate rejects it.
        note = divergence_note(args.variant, history, dataset, params.train, params.data.x_layout)
        print(f"gdpipe: warning: {note}", file=sys.stderr)


if __name__ == "__main__":
    run_command(main)
