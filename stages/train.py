"""train: fit w by gradient descent with one variant (numpy: hand gradient, torch: autograd, on
train.torch.processes x nodes processes through torchrun).

    python stages/train.py --variant numpy --params params.yaml --data data/dataset.npy \
        --history history/numpy.csv --model models/numpy.json
"""

import argparse
import sys
import time

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset, TrainedModel
from gdpipe.core.command import run_command
from gdpipe.train import divergence_note, save, stepper_class, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=config.VARIANTS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="the .npy written by generate")
    parser.add_argument("--history", required=True, help="the CSV to write: epoch,w,loss")
    parser.add_argument("--model", required=True, help="the JSON to write: the final w")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    outputs = (args.history, args.model)
    if args.variant == "torch" and params.train.torch.world_size > 1:
        from gdpipe.train import torchrun

        torchrun.train(args.params, args.data, *outputs, params.train.torch)  # rank 0 writes the outputs
        diverged_at = TrainedModel.load(args.model, "torch").diverged_at_epoch
    else:
        dataset = Dataset.load(args.data)
        stepper_class(args.variant)  # imports torch now, so that the clock times training alone
        started_ms = time.time_ns() // 1_000_000
        history = train(args.variant, dataset, params.train)
        save(args.variant, history, params, outputs, started_ms, time.time_ns() // 1_000_000)
        diverged_at = history.diverged_at
    config.check_unchanged(args.params, params, config.train_stage_keys(args.variant))  # last: DVC reads it next
    if diverged_at:
        # Recorded, not fatal: a learning-rate sweep should still show this run; the gate rejects it.
        note = divergence_note(args.variant, diverged_at, Dataset.open(args.data), params.train, params.data.x_layout)
        print(f"gdpipe: warning: {note}", file=sys.stderr)


if __name__ == "__main__":
    run_command(main)
