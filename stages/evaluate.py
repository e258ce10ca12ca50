"""evaluate: predict f(evaluate.x) with each trained variant, compare them with the closed-form
optimum, and draw loss and w per epoch of both into one PNG (dvc plots show needs a browser and network).

    python stages/evaluate.py --params params.yaml --data data/dataset.npy \
        --models models/numpy.json models/torch.json --histories history/numpy.csv history/torch.csv \
        --out metrics.json --plot plots/curves.png
"""

import argparse

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset, History, TrainedModel, train_outputs
from gdpipe.core.command import run_command
from gdpipe.core.files import write_bytes, write_json
from gdpipe.evaluate import draw_curves, evaluate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="models/<variant>.json, one per variant")
    parser.add_argument("--histories", nargs="+", required=True, help="history/<variant>.csv, one per variant")
    parser.add_argument("--out", required=True, help="the metrics JSON to write")
    parser.add_argument("--plot", required=True, help="the PNG to write: loss and w per epoch")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    outputs = train_outputs(args.models, args.histories)
    models = {variant: TrainedModel.load(model, variant) for variant, (model, _) in outputs.items()}
    histories = {variant: History.read_csv(history) for variant, (_, history) in outputs.items()}
    metrics = evaluate(Dataset.load(args.data), models, histories, params)
    png = draw_curves(histories, metrics["optimum"]["w_star"])  # the slow part, before either file is replaced
    write_json(args.out, metrics)
    write_bytes(args.plot, png)
    config.check_unchanged(args.params, params, ("data.true_w", "evaluate"))  # last: DVC reads params.yaml next


if __name__ == "__main__":
    run_command(main)
