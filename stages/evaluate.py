"""evaluate: predict f(evaluate.x) with each trained variant, compare them with the closed-form
optimum, and draw loss and w per epoch of both into one PNG (dvc plots show needs a browser and network).

    python stages/evaluate.py --params params.yaml --data data/dataset.npz \
        --models models/numpy.json models/torch.json --histories history/numpy.csv history/torch.csv \
        --out metrics.json --plot plots/curves.png
"""

import argparse

from gdpipe import config, data
from gdpipe.errors import InputError, run_command
from gdpipe.evaluate import evaluate
from gdpipe.files import write_json
from gdpipe.history import History
from gdpipe.model import TrainedModel
from gdpipe.plots import draw_curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="one models/<variant>.json per variant")
    parser.add_argument("--histories", nargs="+", required=True, help="the matching history CSVs, same order")
    parser.add_argument("--out", required=True, help="the metrics JSON to write")
    parser.add_argument("--plot", required=True, help="the PNG to write: loss and w per epoch")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    models = {model.variant: model for model in map(TrainedModel.load, args.models)}
    if sorted(models) != sorted(config.VARIANTS) or len(args.histories) != len(args.models):
        raise InputError(f"evaluate needs one model and one history for each of {', '.join(config.VARIANTS)}, got models for {', '.join(models) or 'none'}")
    histories = {variant: History.read_csv(path) for variant, path in zip(models, args.histories, strict=True)}
    metrics = evaluate(data.load(args.data), models, histories, params)
    write_json(args.out, metrics)
    draw_curves(histories, args.plot, metrics["optimum"]["w_star"])


if __name__ == "__main__":
    run_command(main)
