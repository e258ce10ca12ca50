"""validate: check the whole params.yaml, so that a typo fails `dvc repro` even when no other stage reruns.

    python stages/validate.py --params params.yaml
"""

import argparse
import sys

from gdpipe import config
from gdpipe.errors import run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    config.load(args.params)
    print(f"{args.params}: valid")


if __name__ == "__main__":
    sys.exit(run_main(main))
