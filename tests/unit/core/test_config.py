"""params.yaml: one frozen, validated Params object, or exit 2 with one line naming the file, every key
that is wrong, its value and what is allowed; no traceback and nothing written. Files from anywhere:
test_config_fuzz.py; edited while a stage runs: test_config_changes.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gdpipe.core import config
from gdpipe.core.command import run_main
from support import REPO, child_env, load_default_params, stage, with_overrides, write_yaml


def run_generate(params_path) -> int:
    """The generate stage's exit code with this params file (every stage checks the whole file first); a failure writes
    nothing.
    """
    out = params_path.parent / "out" / "dataset.npy"
    code = run_main(stage("generate").main, ["--params", str(params_path), "--out", str(out)])
    assert code == 0 or not out.parent.exists()
    return code


def test_the_repositorys_params_are_valid():
    params = config.load(REPO / "params.yaml")
    assert params.train.lr == 0.01 and params.train.epochs == 100 and params.train.numpy.gradient == "mean"
    assert params.data.n_samples == 4 and params.evaluate.x == 5.0


def test_numbers_are_read_the_way_dvc_reads_them(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("lr: 0.01 ", "lr: 1e-3 ")
    (tmp_path / "params.yaml").write_text(text)
    assert config.load(tmp_path / "params.yaml").train.lr == 0.001


BAD_VALUES = [
    ({"train.lr": -0.1}, "train.lr = -0.1: must be > 0"),
    ({"train.lr": 0}, "train.lr = 0: must be > 0"),
    ({"train.lr": "0.01"}, "train.lr = '0.01': must be a number"),
    ({"train.lr": float("nan")}, "train.lr = nan: must be a finite number"),
    ({"train.epochs": 0}, "train.epochs = 0: must be >= 1"),
    ({"train.epochs": 2.5}, "train.epochs = 2.5: must be a whole number"),
    ({"train.epochs": 10**12}, "train.epochs = 1000000000000: must be <= 10000000"),
    ({"data.n_samples": 0}, "data.n_samples = 0: must be >= 1"),
    ({"data.noise_std": -1.0}, "data.noise_std = -1.0: must be >= 0"),
    ({"train.numpy.gradient": "median"}, "train.numpy.gradient = 'median': must be 'mean' or 'sum'"),
    (
        {"data.x_layout": "uniform", "data.x_low": 1.0, "data.x_high": 1.0},
        "data: x_low must be < x_high for the uniform layout, got 1.0 and 1.0",
    ),
    ({"train.torch.processes": 0}, "train.torch.processes = 0: must be >= 1"),
    ({"train.torch.processes": 10**6}, "train.torch.processes = 1000000: must be <= 1024"),
    ({"train.torch.nodes": 1.5}, "train.torch.nodes = 1.5: must be a whole number"),
    # One process per point at most: the lesson's 4 points take 4 processes, not 5.
    (
        {"train.torch.processes": 5},
        "train.torch.processes x nodes = 5 processes for data.n_samples = 4 points: at most one process per point",
    ),
    (
        {"train.torch.processes": 2, "train.torch.nodes": 3},
        "train.torch.processes x nodes = 6 processes for data.n_samples = 4 points: at most one process per point",
    ),
    *(
        (
            {"train.torch.rendezvous": bad},
            f"train.torch.rendezvous = {bad!r}: must be host:port, a name or IPv4 address of this machine and a port "
            "from 1 to 65535",
        )
        for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "http://host:80", ":29400", "host:port")
    ),
    ({"train.torch.join_timeout": 0}, "train.torch.join_timeout = 0: must be >= 1"),
    ({"train": [1, 2]}, "train = a list: must be a mapping of lr, epochs, w_init, log_every, numpy, torch"),
    # Longer than an MLflow store on PostgreSQL accepts: refused here, not half-way through publishing.
    ({"track.experiment": "e" * 257}, f"track.experiment = '{'e' * 56}...: must be at most 256 characters"),
    # The first and the last epoch are always logged: fewer than 2 points cannot hold both.
    ({"track.max_points_per_metric": 1}, "track.max_points_per_metric = 1: must be >= 2"),
    ({"track.max_points_per_metric": 200.5}, "track.max_points_per_metric = 200.5: must be a whole number"),
    ({"track.max_points_per_metric": "all"}, "track.max_points_per_metric = 'all': must be a whole number"),
    # make tune's study: an empty or inverted search space, a study name that cannot name a DVC experiment.
    ({"tune.lr_low": 0.2, "tune.lr_high": 0.1}, "tune: lr_low must be < lr_high, got 0.2 and 0.1"),
    ({"tune.lr_low": 0.0}, "tune.lr_low = 0.0: must be > 0"),
    ({"tune.trials": 0}, "tune.trials = 0: must be >= 1"),
    ({"tune.sampler": "grid"}, "tune.sampler = 'grid': must be 'tpe' or 'random'"),
    ({"tune.study": "my study"}, "tune.study = 'my study': String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'"),
    (
        {"tune.heartbeat_interval": 60, "tune.grace_period": 60},
        "tune: grace_period must be > heartbeat_interval, got 60 and 60: a live worker's trial would be taken for dead",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES)
def test_bad_value_is_one_line_with_exit_2(tmp_path, capsys, overrides, message):
    path = write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), overrides))
    assert run_generate(path) == 2
    err = capsys.readouterr().err
    assert err == f"gdpipe: error: {path}: {message}\n"


def test_unknown_key_names_the_typo_and_the_allowed_keys(tmp_path, capsys):
    document = load_default_params()
    document["train"]["learning_rate"] = 0.1
    path = write_yaml(tmp_path / "params.yaml", document)
    assert run_generate(path) == 2
    assert capsys.readouterr().err == (
        f"gdpipe: error: {path}: unknown key 'train.learning_rate' "
        "(allowed here: lr, epochs, w_init, log_every, numpy, torch)\n"
    )


def test_missing_key_is_named(tmp_path, capsys):
    document = load_default_params()
    del document["data"]["seed"]
    path = write_yaml(tmp_path / "params.yaml", document)
    assert run_generate(path) == 2
    assert capsys.readouterr().err == f"gdpipe: error: {path}: missing key 'data.seed'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty; expected the sections data, train, evaluate, track, tune, thresholds"),
        (
            "- 1\n- 2\n",
            "the top level must be a mapping of sections (data, train, evaluate, track, tune, thresholds), got a list",
        ),
        ("train: [1, 2\n", "invalid YAML at line 2, column 1"),
        ("train: {lr: 1}\ntrain: {lr: 2}\n", 'invalid YAML at line 2, column 1: found duplicate key "train"'),
        (
            "data: !!python/object/apply:os.system ['echo pwned']\n",
            "invalid YAML at line 1, column 7: could not determine a constructor for the tag",
        ),
        # Two stack frames per level: twice Python's recursion limit. (Not in the property test below:
        # Hypothesis raises the limit, and ruamel's scanner takes time quadratic in the depth it reaches.)
        pytest.param("data: " + "[" * 1000 + "]" * 1000 + "\n", "invalid YAML: nested too deeply", id="nested"),
    ],
)
def test_malformed_yaml_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "params.yaml").write_text(text)
    assert run_generate(tmp_path / "params.yaml") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_missing_file(tmp_path, capsys):
    assert run_generate(tmp_path / "nope.yaml") == 2
    assert capsys.readouterr().err == f"gdpipe: error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_a_renamed_key_names_the_new_name_first_then_the_missing_one(tmp_path, capsys):
    """lr renamed to learning_rate: the unknown key is the mistake, the missing key its consequence."""
    document = load_default_params()
    document["train"]["learning_rate"] = document["train"].pop("lr")
    path = write_yaml(tmp_path / "params.yaml", document)
    assert run_generate(path) == 2
    assert capsys.readouterr().err == (
        f"gdpipe: error: {path}: unknown key 'train.learning_rate' "
        "(allowed here: lr, epochs, w_init, log_every, numpy, torch); "
        "missing key 'train.lr'\n"
    )


def test_every_problem_is_named_in_one_line_unknown_keys_first(tmp_path, capsys):
    document = with_overrides(load_default_params(), {"data.seed": -1, "train.lr": -1, "evaluate.x": "five"})
    document["track"]["colour"] = "blue"
    path = write_yaml(tmp_path / "params.yaml", document)
    assert run_generate(path) == 2
    assert capsys.readouterr().err == (
        f"gdpipe: error: {path}: unknown key 'track.colour' "
        "(allowed here: experiment, model_name, max_points_per_metric); "
        "data.seed = -1: must be >= 0; train.lr = -1: must be > 0; evaluate.x = 'five': must be a number\n"
    )


def test_many_problems_are_counted_beyond_the_first_few(tmp_path, capsys):
    document = load_default_params()
    document["train"] |= {f"unknown_key_number_{index}_with_a_long_name": index for index in range(20)}
    path = write_yaml(tmp_path / "params.yaml", document)
    assert run_generate(path) == 2
    err = capsys.readouterr().err
    named = err.count("unknown key 'train.unknown_key_number_")
    assert err.count("\n") == 1 and len(err) < 600 and named >= 2, err
    assert err.endswith(f" (and {20 - named} more problems)\n"), err


def test_a_stage_with_bad_params_prints_no_traceback_and_writes_nothing(tmp_path):
    path = write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"train.lr": -1}))
    out = tmp_path / "data" / "dataset.npy"
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "generate.py"), "--params", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(PYTHONPATH=str(REPO / "src")),
    )
    assert done.returncode == 2
    assert done.stderr == f"gdpipe: error: {path}: train.lr = -1: must be > 0\n"
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_generate_stage_main_writes_the_dataset(tmp_path):
    out = tmp_path / "dataset.npy"
    assert run_main(stage("generate").main, ["--params", str(REPO / "params.yaml"), "--out", str(out)]) == 0
    assert out.stat().st_size > 0
