"""The stage scripts in this process when an input or a run goes wrong: a corrupt or missing input between
stages is one line naming the file, Ctrl-C while evaluate draws and params.yaml edited while training each
stop the stage; the earlier outputs stay as they were."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gdpipe.core.artifacts import Dataset, train_outputs
from gdpipe.core.command import InputError
from support import (
    EVALUATE_ARGS,
    EVALUATE_OUTS,
    TRACK_ARGS,
    TRAIN_ARGS,
    assert_one_error_line,
    build_workspace,
    load_default_params,
    run_stage,
    stage,
    with_overrides,
    write_yaml,
)

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


# --- Ctrl-C while a stage runs -----------------------------------------------------------------


def test_evaluate_interrupted_while_drawing_keeps_both_previous_outputs(own_workspace, monkeypatch):
    """The plot (most of the stage's time) is drawn before either file is replaced: Ctrl-C then leaves both as they
    were.
    """
    folder = own_workspace
    monkeypatch.chdir(folder)
    before = {name: (folder / name).read_bytes() for name in EVALUATE_OUTS}
    text = (folder / "params.yaml").read_text()
    assert text.count("  x: 5.0\n") == 1
    (folder / "params.yaml").write_text(text.replace("  x: 5.0\n", "  x: 7.0\n"))  # a new result, had it got that far

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage("evaluate"), "draw_curves", interrupted)
    code, stderr = run_stage(stage("evaluate").main, EVALUATE_ARGS)
    assert code == 130 and stderr == "gdpipe: interrupted (SIGINT); no output was half-written\n"
    assert {name: (folder / name).read_bytes() for name in EVALUATE_OUTS} == before


# --- params.yaml edited while a stage runs (the real `dvc repro`: integration/test_params_edited.py) ---


def test_params_edited_while_training_fail_the_train_stage_in_one_line(own_workspace, monkeypatch):
    """DVC would record the new lr beside a model trained with the old one; the stage fails instead, so it records
    nothing."""
    folder = own_workspace
    module = stage("train")
    trained = module.train

    def edited_while_training(*args, **kwargs):
        write_yaml(folder / "params.yaml", with_overrides(load_default_params(), {"train.lr": 0.02}))
        return trained(*args, **kwargs)

    monkeypatch.setattr(module, "train", edited_while_training)
    monkeypatch.chdir(folder)
    code, stderr = run_stage(module.main, TRAIN_ARGS)
    assert code == 2
    assert_one_error_line(stderr, "params.yaml changed while this stage ran (train.lr 0.01 -> 0.02)", "make repro")
