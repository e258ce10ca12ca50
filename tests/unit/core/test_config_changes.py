"""params.yaml edited while a stage runs: a stage reads params.yaml when it starts, DVC after it exits, so
config.check_unchanged, a stage's last step, fails the stage when the two would differ; config.check_recorded
refuses outputs made with other params than dvc.lock records. The real `dvc repro`:
tests/integration/test_params_edited.py."""

from __future__ import annotations

import contextlib
import io

import pytest

from gdpipe.core import config
from gdpipe.core.command import run_main
from support import load_default_params, with_overrides, write_yaml


def test_how_many_processes_train_torch_is_no_part_of_its_model(params):
    """The model records the keys that shape it; processes, nodes and the rendezvous change no bit of it."""
    p = params({"train.torch.processes": 4, "train.torch.nodes": 1, "train.torch.rendezvous": "example.org:1"})
    assert config.values(p, config.training_keys("torch")) == config.values(params(), config.training_keys("torch"))
    assert config.values(p, config.training_keys("torch"))["train.torch.device"] == "cpu"
    assert p.train.torch.world_size == 4


def test_values_flattens_sections_and_keys_under_their_dotted_names(params):
    assert config.values(params(), ["data.x_layout", *config.training_keys("numpy")]) == {
        "data.x_layout": "grid",
        "train.lr": 0.01,
        "train.epochs": 100,
        "train.w_init": 0.0,
        "train.log_every": 1,
        "train.numpy.gradient": "mean",
    }
    assert set(config.values(params(), ["evaluate", "track"])) == {
        "evaluate.x",
        "track.experiment",
        "track.model_name",
        "track.max_points_per_metric",
    }


def test_check_unchanged_passes_when_the_keys_a_stage_read_are_unchanged(tmp_path, params):
    used = params()
    path = write_yaml(tmp_path / "params.yaml", load_default_params())
    config.check_unchanged(path, used, ["data", "train"])
    # Keys the stage did not read may change (a threshold, evaluate.x under a training): DVC records none of them.
    write_yaml(path, with_overrides(load_default_params(), {"evaluate.x": 7.0, "thresholds.loss.max": 1.0}))
    config.check_unchanged(path, used, ["data", "train"])
    # The same values in another spelling are the same values.
    path.write_text(path.read_text().replace("lr: 0.01", "lr: 1.0e-2"))
    config.check_unchanged(path, used, ["train.lr"])


def test_check_unchanged_names_each_changed_key_old_and_new_in_one_line(tmp_path, params):
    used = params()
    changed = {"train.lr": 0.02, "train.numpy.gradient": "sum", "evaluate.x": 7.0}
    path = write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), changed))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_main(lambda argv: config.check_unchanged(path, used, ["data.x_layout", "train"]))
    assert code == 2
    assert err.getvalue() == (
        f"gdpipe: error: {path} changed while this stage ran (train.lr 0.01 -> 0.02; train.numpy.gradient 'mean' -> "
        "'sum'): its outputs were made with the old values, so DVC records nothing for it; run make repro again\n"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "is empty"), ("train: [\n", "invalid YAML"), (None, "no such file")],
    ids=["emptied", "half-written", "removed"],
)
def test_check_unchanged_of_a_file_that_became_unreadable_says_so(tmp_path, params, text, problem):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(config.InputError) as caught:
        config.check_unchanged(path, params(), ["data"])
    message = str(caught.value)
    assert message.startswith(f"{path} changed while this stage ran and cannot be read now (")
    assert problem in message and message.endswith("fix it, then run make repro again")


def test_changes_names_keys_on_one_side_only():
    assert config.changes({"a": 1, "b": "x"}, {"a": 1, "b": "y", "c": 2.5}) == "b 'x' -> 'y'; c (none) -> 2.5"
    assert config.changes({"a": 1}, {"a": 1}) == ""


def test_check_recorded_names_the_stage_that_ran_with_other_params(tmp_path, params):
    """dvc.lock holds what each stage ran with; track publishes only when params.yaml still says the same."""
    lock = tmp_path / "dvc.lock"
    stages = {
        "generate": {"params": {"params.yaml": {"data": params().data.model_dump()}}},
        "train@numpy": {"params": {"params.yaml": {"train.lr": 0.01, "train.numpy": {"gradient": "mean"}}}},
        "track": {"params": {"params.yaml": {"evaluate": {"x": 1.0}}}},  # skipped: the stage that checks
    }
    write_yaml(lock, {"schema": "2.0", "stages": stages})
    config.check_recorded(lock, "params.yaml", params(), skip=("track",))
    config.check_recorded(
        tmp_path / "none.lock", "params.yaml", params({"data.seed": 1}), skip=()
    )  # nothing to compare
    with pytest.raises(config.InputError) as caught:
        config.check_recorded(lock, "params.yaml", params({"data.seed": 1, "train.numpy.gradient": "sum"}), ("track",))
    assert str(caught.value) == (
        "params.yaml changed after the generate stage ran (data.seed 0 -> 1): its outputs are not of these params, "
        "so nothing was published; run make repro again"
    )
    with pytest.raises(config.InputError, match=r"after the train@numpy stage ran \(train.numpy.gradient 'mean' -> "):
        config.check_recorded(lock, "params.yaml", params({"train.numpy.gradient": "sum"}), ("track",))
