"""generate: build the data set y = true_w * x + noise from params.yaml's data section.

python stages/generate.py --params params.yaml --out data/dataset.npy
"""

import argparse

from gdpipe.core import config
from gdpipe.core.command import run_command
from gdpipe.data import generate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="the .npy to write (rows x and y, float32)")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    generate(params.data).save(args.out)
    config.check_unchanged(args.params, params, ("data",))  # last: DVC reads params.yaml next


if __name__ == "__main__":
    run_command(main)
