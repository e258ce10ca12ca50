"""plot: draw loss and w per epoch of both variants into one PNG (dvc plots show needs a browser and network).

    python stages/plot.py --data data/dataset.npz --histories history/numpy.csv history/torch.csv --out plots/curves.png
"""

import argparse
import sys
from pathlib import Path

from gdpipe import data
from gdpipe.errors import run_main
from gdpipe.history import History
from gdpipe.linear import optimal_w
from gdpipe.plots import draw_curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", nargs="+", required=True, help="history/<variant>.csv; the file name is the legend")
    parser.add_argument("--data", required=True, help="the data set, for the closed-form optimum w*")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    histories = {Path(path).stem: History.read_csv(path) for path in args.histories}
    dataset = data.load(args.data)
    draw_curves(histories, args.out, optimal_w(dataset.x, dataset.y))


if __name__ == "__main__":
    sys.exit(run_main(main))
