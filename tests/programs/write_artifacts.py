"""Write every artifact that needs only NumPy, with whatever Python runs this: the cross-interpreter test's writer.

    python tests/programs/write_artifacts.py OUT_DIR

For the lesson's params and for a large noisy uniform data set: the generate stage's data set, the numpy
variant's history and model (the train stage), and metrics.json as the evaluate stage writes it (torch is not
installed here, so both variants' sections hold the numpy result: what is compared is the writer's bytes).
"""

import contextlib
import sys
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO / "stages")]

import generate  # noqa: E402  (the stage scripts, found on the path set above)
import train  # noqa: E402

from gdpipe.core import config  # noqa: E402
from gdpipe.core.artifacts import Dataset, History, TrainedModel  # noqa: E402
from gdpipe.core.files import write_json  # noqa: E402
from gdpipe.evaluate import evaluate  # noqa: E402

CASES = {
    "lesson": {},
    "noisy": {"data": {"x_layout": "uniform", "n_samples": 300_000, "noise_std": 0.5, "seed": 7}, "train": {"lr": 0.5}},
}


def main(out: Path) -> None:
    for case, override in CASES.items():
        folder = out / case
        folder.mkdir(parents=True)
        params_path = folder / "params.yaml"
        document = YAML(typ="safe").load(REPO / "params.yaml")
        for section, values in override.items():
            document[section] |= values
        YAML(typ="safe").dump(document, params_path)
        params = config.load(params_path)
        with contextlib.chdir(folder):
            generate.main(["--params", "params.yaml", "--out", "data/dataset.npy"])
            train.main(
                "--variant numpy --params params.yaml --data data/dataset.npy "
                "--history history/numpy.csv --model models/numpy.json".split()
            )
            model, history = TrainedModel.load("models/numpy.json"), History.read_csv("history/numpy.csv")
            both = {"numpy": model, "torch": model}, {"numpy": history, "torch": history}
            write_json("metrics.json", evaluate(Dataset.load("data/dataset.npy"), *both, params))
            Path("params.yaml").unlink()
            for timing in Path("history").glob("*.timing.json"):  # when it ran: not an output
                timing.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
