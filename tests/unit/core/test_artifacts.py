"""The files stages hand each other: the data set byte-reproducible, the history exact, and every corrupt
or missing input between stages one line naming the file, with the earlier outputs kept."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gdpipe.core.artifacts import Dataset, History, train_outputs
from gdpipe.core.command import InputError
from gdpipe.data import generate
from gdpipe.train import train
from support import (
    EVALUATE_ARGS,
    EVALUATE_OUTS,
    TRACK_ARGS,
    TRAIN_ARGS,
    assert_one_error_line,
    build_workspace,
    committed_md5,
    run_stage,
    stage,
)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- data/dataset.npy ------------------------------------------------------------------------


def test_same_params_give_a_byte_identical_file(tmp_path, params):
    p = params({"data.noise_std": 0.3, "data.n_samples": 1000})
    generate(p.data).save(tmp_path / "a.npy")
    generate(p.data).save(tmp_path / "b.npy")
    assert sha256(tmp_path / "a.npy") == sha256(tmp_path / "b.npy")
    other = params({"data.noise_std": 0.3, "data.n_samples": 1000, "data.seed": 1})
    generate(other.data).save(tmp_path / "c.npy")
    assert sha256(tmp_path / "c.npy") != sha256(tmp_path / "a.npy")


@pytest.mark.parametrize("n", [1, 4, 1000, 123_457])
def test_saved_file_is_what_numpy_writes_and_loads_back_exactly(tmp_path, params, n):
    generated = generate(params({"data.noise_std": 1.0, "data.n_samples": n}).data)
    generated.save(tmp_path / "d.npy")
    # gdpipe writes every byte itself; they are the bytes of NumPy's own .npy writer, which any NumPy reads.
    np.save(tmp_path / "numpy.npy", np.stack([generated.x, generated.y]))
    assert (tmp_path / "d.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    loaded = Dataset.load(tmp_path / "d.npy")
    assert np.array_equal(loaded.x, generated.x) and np.array_equal(loaded.y, generated.y)
    assert loaded.x.dtype == np.float32 and loaded.x.flags.c_contiguous and loaded.y.flags.c_contiguous


def test_lesson_dataset_has_the_committed_bytes(tmp_path, params):
    """The bytes dvc.lock records for the lesson's data (md5), written by this process's Python and NumPy."""
    generate(params().data).save(tmp_path / "d.npy")
    assert hashlib.md5((tmp_path / "d.npy").read_bytes()).hexdigest() == committed_md5("data/dataset.npy")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable data set"),
        (b"\x93NUMPY\x01\x00 truncated", "not a readable data set"),
        (b"PK\x03\x04 a zip, as the old .npz", "not a readable data set"),
    ],
)
def test_corrupt_dataset_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "d.npy").write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        Dataset.load(tmp_path / "d.npy")
    assert str(tmp_path / "d.npy") in str(err.value) and "\n" not in str(err.value)


def test_truncated_dataset_is_rejected(tmp_path, params):
    generate(params({"data.n_samples": 10_000}).data).save(tmp_path / "d.npy")
    whole = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "d.npy").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="not a readable data set"):
        Dataset.load(tmp_path / "d.npy")


def test_missing_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match=r"no such file \(run the generate stage: dvc repro\)"):
        Dataset.load(tmp_path / "nope.npy")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6.0).reshape(2, 3),  # float64
        np.arange(3, dtype=np.float32),  # one row
        np.arange(9, dtype=np.float32).reshape(3, 3),  # three rows
        np.zeros((2, 0), dtype=np.float32),  # empty
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # columns first
    ],
)
def test_wrong_arrays_are_rejected(tmp_path, array):
    np.save(tmp_path / "d.npy", array)
    with pytest.raises(InputError, match="expected a non-empty float32 array of 2 rows"):
        Dataset.load(tmp_path / "d.npy")


# --- history/<variant>.csv -------------------------------------------------------------------


def test_history_csv_round_trips_exactly(tmp_path, params):
    p = params({"train.epochs": 50})
    history = train("numpy", generate(p.data), p.train)
    history.write_csv(tmp_path / "h.csv")
    back = History.read_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[:2] == ["epoch,w,loss", "1,0.3,30.0"]
    assert np.array_equal(back.epoch, history.epoch)
    assert np.array_equal(back.w, history.w) and np.array_equal(back.loss, history.loss)


# --- between stages: a corrupt or missing input ----------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_row(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "3,0.7,not-a-number\n"
    path.write_text("".join(lines))


def _nan_row(path: Path) -> None:
    path.write_text(path.read_text().replace("\n2,", "\n2,nan,1.0\n3,", 1))


def _not_json(path: Path) -> None:
    path.write_text('{"numpy": {"w": 2.0,')


def _numpy_model(path: Path) -> None:
    """Another variant's model under this name (a copy gone wrong)."""
    path.write_text(path.with_name("numpy.json").read_text())


def _old_model(path: Path) -> None:
    """A model of the format before it recorded the params it was trained with."""
    model = json.loads(path.read_text())
    del model["trained_with"]
    path.write_text(json.dumps(model))


def _listed_params(path: Path) -> None:
    model = json.loads(path.read_text())
    model["trained_with"] = list(model["trained_with"])
    path.write_text(json.dumps(model))


def _nan_json(path: Path) -> None:
    text, count = re.subn(r'"w": [-0-9.e]+', '"w": NaN', path.read_text())
    assert count == 1
    path.write_text(text)


def _nan_data(path: Path) -> None:
    dataset = Dataset.load(path)
    x = dataset.x.copy()
    x[1] = np.nan
    Dataset(x=x, y=dataset.y).save(path)


def _summary(argv):
    from gdpipe import summary

    return summary.main(argv)


CORRUPT_INPUTS = [
    # (stage, its arguments, the input spoiled, how, what the line says, the outputs that must stay as they were)
    (
        "train",
        TRAIN_ARGS,
        "data/dataset.npy",
        _truncate,
        "not a readable data set",
        ["history/numpy.csv", "models/numpy.json"],
    ),
    ("train", TRAIN_ARGS, "data/dataset.npy", _nan_data, "must be finite", ["history/numpy.csv", "models/numpy.json"]),
    ("evaluate", EVALUATE_ARGS, "data/dataset.npy", os.unlink, "no such file", EVALUATE_OUTS),
    (
        "evaluate",
        EVALUATE_ARGS,
        "history/torch.csv",
        _bad_row,
        "line 4: expected epoch,w,loss as numbers",
        EVALUATE_OUTS,
    ),
    (
        "evaluate",
        EVALUATE_ARGS,
        "history/numpy.csv",
        _nan_row,
        "line 3: epochs must increase from 1 and w, loss be finite",
        EVALUATE_OUTS,
    ),
    ("evaluate", EVALUATE_ARGS, "models/torch.json", _not_json, "not valid JSON", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "history/torch.csv", _truncate, "", EVALUATE_OUTS),
    (
        "evaluate",
        EVALUATE_ARGS,
        "models/torch.json",
        _numpy_model,
        "holds the numpy model, expected the torch one",
        EVALUATE_OUTS,
    ),
    (
        "evaluate",
        EVALUATE_ARGS,
        "models/numpy.json",
        _nan_json,
        "not valid JSON (NaN is not a number gdpipe accepts)",
        EVALUATE_OUTS,
    ),
    (
        "evaluate",
        EVALUATE_ARGS,
        "models/numpy.json",
        _old_model,
        "expected a JSON object with the keys variant, w, epochs_trained, diverged_at_epoch, trained_with",
        EVALUATE_OUTS,
    ),
    ("track", TRACK_ARGS, "models/torch.json", _listed_params, "trained_with must map each param to its value", []),
    ("track", TRACK_ARGS, "metrics.json", _not_json, "not valid JSON", []),
    ("track", TRACK_ARGS, "history/numpy.csv", _bad_row, "line 4", []),
    ("track", TRACK_ARGS, "models/torch.json", _numpy_model, "holds the numpy model, expected the torch one", []),
    ("summary", ["metrics.json"], "metrics.json", _not_json, "not valid JSON", []),
]


@pytest.mark.parametrize(
    ("name", "argv", "spoiled", "spoil", "message", "kept"),
    CORRUPT_INPUTS,
    ids=[f"{case[0]}-{case[2]}-{case[3].__name__}" for case in CORRUPT_INPUTS],
)
def test_a_corrupt_input_between_stages_is_one_line_naming_the_file(
    own_workspace, tmp_path, monkeypatch, name, argv, spoiled, spoil, message, kept
):
    folder = own_workspace
    before = {name: (folder / name).read_bytes() for name in kept}
    spoil(folder / spoiled)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    main = _summary if name == "summary" else stage(name).main
    code, stderr = run_stage(main, argv)
    assert code == 2
    assert_one_error_line(stderr, f"gdpipe: error: {spoiled}: ", message)
    assert {name: (folder / name).read_bytes() for name in kept} == before, "an earlier result was lost"
    assert (
        not (folder / "published.json").exists()
        and not (folder / "runs.json").exists()
        and not (tmp_path / "store").exists()
    )
    assert not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def test_models_and_histories_are_matched_by_variant_not_by_order(tmp_path, monkeypatch):
    """evaluate pairs models/<variant>.json with history/<variant>.csv in any order; a missing or doubled variant is
    one line.
    """
    # The lesson's summed gradient: the two variants' trajectories differ, so a mix-up would show.
    folder = build_workspace(tmp_path / "ws", {"train.numpy.gradient": "sum", "train.epochs": 5})
    monkeypatch.chdir(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["numpy"]["w"] != metrics["torch"]["w"] and metrics["numpy"]["loss"] != metrics["torch"]["loss"]
    swapped = [*EVALUATE_ARGS]  # the histories in the other order than the models
    start = swapped.index("--histories") + 1
    swapped[start : start + 2] = ["history/torch.csv", "history/numpy.csv"]
    swapped[swapped.index("--out") + 1] = "swapped.json"
    assert run_stage(stage("evaluate").main, swapped) == (0, "")
    assert (folder / "swapped.json").read_bytes() == (folder / "metrics.json").read_bytes()
    assert train_outputs(["m/torch.json", "m/numpy.json"], ["h/numpy.csv", "h/torch.csv"]) == {
        "numpy": (Path("m/numpy.json"), Path("h/numpy.csv")),
        "torch": (Path("m/torch.json"), Path("h/torch.csv")),
    }
    with pytest.raises(InputError, match=r"expected one <variant>\.json model"):  # --models and --histories swapped
        train_outputs(["h/numpy.csv", "h/torch.csv"], ["m/numpy.json", "m/torch.json"])

    doubled = [*EVALUATE_ARGS]
    doubled[doubled.index("models/torch.json")] = "models/numpy.json"
    before = (folder / "metrics.json").read_bytes()
    code, stderr = run_stage(stage("evaluate").main, doubled)
    assert code == 2 and (folder / "metrics.json").read_bytes() == before
    assert_one_error_line(
        stderr,
        "expected one <variant>.json model and one <variant>.csv history for each of numpy, torch",
        "models/numpy.json, models/numpy.json, history/numpy.csv, history/torch.csv",
    )
