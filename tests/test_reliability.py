"""When things go wrong: bad input, interruptions, parallel publishers, determinism and secrets.

Whatever happens, gdpipe says in one line what went wrong (exit 2, 130 or 143), keeps every earlier
result, leaves nothing half-written, and never prints or records a credential.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from conftest import REPO, load_default_params
from gdpipe import config
from gdpipe.errors import run_main

sys.path.insert(0, str(REPO / "stages"))
import evaluate  # noqa: E402  (the stage scripts, imported to call their main)
import generate  # noqa: E402
import train  # noqa: E402


def run_stage(main, argv: list[str]) -> tuple[int, str]:
    """A stage's exit code and stderr, run in this process the way its __main__ runs it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_main(main, argv)
    return code, err.getvalue()


def assert_one_error_line(stderr: str, *names: str) -> None:
    """Exactly one line, `gdpipe: error: ...`, that mentions every one of `names`; never a traceback."""
    assert stderr.startswith("gdpipe: error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), stderr[:2000]
    assert "Traceback" not in stderr
    for name in names:
        assert name in stderr, (name, stderr[:2000])


# Upstream: importing mlflow.pyfunc in a process whose warnings are errors trips over MLflow's own type hints.
publishes_in_process = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# --- Bad input: params.yaml ------------------------------------------------------------------

SECTIONS = {name: sorted(field.annotation.model_fields) for name, field in config.Params.model_fields.items() if name != "thresholds"}
LEAVES = [f"{section}.{key}" for section, keys in SECTIONS.items() for key in keys if key not in ("numpy", "torch")]
LEAVES += ["train.numpy.gradient", "train.torch.device", "thresholds.loss", "thresholds.loss.max", "thresholds.abs_error.max"]
PATHS = [*config.Params.model_fields, *LEAVES, "train.numpy", "train.torch"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**30), 2**63, 0, -1]),
    st.floats(),  # NaN, infinities, subnormals, huge
    st.sampled_from([1e308, -1e308, 5e-324, 3.5e38, 1e39, 1e-46]),
    st.text(max_size=20),
    st.text(alphabet="\n\t\"'#:{}[],&*!|>%@`\\ \x85\u2028", max_size=8),
    st.sampled_from(["x" * 2000, "1e-3", "0x10", ".inf", "NaN", "yes", "null", "~", "mean", "cuda"]),
)
garbage = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4), max_leaves=12)


def _set(document: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document[key]
    document[last] = value


def _delete(document: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document[key]
    del document[last]


@st.composite
def malformed_params(draw):
    """(YAML text, the key as the error must name it, or None): one change to the repository's params.yaml."""
    document = load_default_params()
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "extra", "top", "text"]))
    if kind == "text":  # raw text: a YAML tag, a truncated file, deep nesting, a broken line
        text = (REPO / "params.yaml").read_text()
        lines = text.splitlines(keepends=True)
        tag = draw(st.sampled_from([
            "!!python/object/apply:os.system ['touch pwned']", "!!python/name:os.system", "!!python/object/new:dict []",
            "!custom 1", "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "!!float nan", "!!int 1e3",
            "[" * 3000 + "]" * 3000, "{a: " * 2000 + "1" + "}" * 2000, "9" * 5000, "&a [*a]", "*undefined", "'unclosed",
        ]))
        target = draw(st.sampled_from([i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]))
        key_text, _, rest = lines[target].partition(": ")
        mutated = lines[:target] + [f"{key_text}: {tag}\n"] + lines[target + 1 :]
        if draw(st.booleans()):
            mutated = ["".join(mutated)[: draw(st.integers(0, len(text)))]]
        return "".join(mutated), None
    if kind == "top":
        return _dump(draw(st.one_of(garbage, st.just(None), st.just("")))), None
    path = draw(st.sampled_from(PATHS))
    if kind == "set":
        _set(document, path, draw(garbage))
    elif kind == "delete":
        _delete(document, path)
    else:
        section = draw(st.sampled_from([None, *config.Params.model_fields, "train.numpy", "train.torch", "thresholds.loss"]))
        name = draw(st.text(min_size=1, max_size=12) | st.integers() | st.sampled_from([None, True, 1.5]))
        parent = document
        for part in section.split(".") if section else []:
            parent = parent[part]
        if name in parent:
            return _dump(document), None
        known = set(parent)
        parent[name] = draw(garbage)
        text = _dump(document)
        reloaded = YAML(typ="safe").load(text)  # YAML may read a key back otherwise ("\x85" is a line break)
        for part in section.split(".") if section else []:
            reloaded = reloaded[part]
        (name,) = set(reloaded) - known or {None}
        if name is None:
            return text, None
        dotted = f"{section}.{name}" if section else str(name)
        named_alone = not isinstance(name, str) or section == "thresholds"  # a threshold's key is a metric name
        return text, repr(name) if named_alone else repr(dotted)[1:-1]
    return _dump(document), path


def _dump(document: object) -> str:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(malformed_params())
@example(("data: " + "[" * 5000 + "]" * 5000 + "\n", None))  # nested deeper than Python's recursion limit
@example(((REPO / "params.yaml").read_text().replace("epochs: 100", "epochs: " + "9" * 5000), None))  # beyond int()'s digit limit
@example(((REPO / "params.yaml").read_text() + "1: 2\n", "1"))  # keys that are not strings
@example(((REPO / "params.yaml").read_text() + "null: 2\n", "None"))
@example(((REPO / "params.yaml").read_text().replace("lr: 0.01 ", f"lr: '{'y' * 100_000}' "), "train.lr"))  # a pasted blob
@example(((REPO / "params.yaml").read_text().replace("  loss: {max", f"  {'z' * 1000}: {{max"), "thresholds"))  # YAML's longest plain key
def test_malformed_params_load_or_fail_with_one_line_naming_the_key(case):
    """Any params.yaml either loads into a valid Params or exits 2 with one short line naming the key; nothing is written."""
    text, key = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(text)
        code, stderr = run_stage(config.main, [str(path)])
        if code == 0:
            assert stderr == ""
            params = config.load(path)
            assert config.Params.model_validate(params.model_dump(exclude_unset=True)) == params
            return
        assert code == 2
        assert_one_error_line(stderr, str(path))
        assert len(stderr) < 600, f"{len(stderr)} characters: {stderr[:300]}"
        if key is not None:
            # The key itself, or its section when a rule about the whole section broke ("thresholds.loss: sets no bound").
            assert key[:40] in stderr or f": {key.rpartition('.')[0]}: " in stderr, (key, stderr)
        out = Path(folder) / "out" / "dataset.npz"
        assert run_stage(generate.main, ["--params", str(path), "--out", str(out)]) == (code, stderr)
        assert files_under(Path(folder)) == [path]
        assert not Path("pwned").exists()


# --- Bad input: numbers that are legal YAML but not results ----------------------------------

MODERATE = {
    "data.true_w": st.floats(-4, 4),
    "data.noise_std": st.floats(0, 1),
    "data.x_low": st.floats(-4, 0),
    "data.x_high": st.floats(0.001, 4),
    "train.lr": st.floats(1e-4, 0.3),
    "train.w_init": st.floats(-4, 4),
    "evaluate.x": st.floats(-10, 10),
}
EXTREME = st.one_of(
    st.floats(),  # huge, tiny, subnormal, NaN, infinities
    st.sampled_from([0.0, 1e-46, -1e-46, 5e-324, 1e38, 3.4e38, -3.5e38, 1e39, 1e300, -1e300, 1e-300]),
)


@st.composite
def numeric_params(draw) -> dict:
    """The repository's params with moderate numbers, up to two of them drawn from anywhere in float64 (small data, few epochs)."""
    overrides = {key: draw(strategy) for key, strategy in MODERATE.items()}
    for key in draw(st.lists(st.sampled_from(sorted(MODERATE)), max_size=2, unique=True)):
        value = draw(EXTREME)
        overrides[key] = abs(value) if key in ("data.noise_std", "train.lr") else value
    return overrides | {
        "data.n_samples": draw(st.integers(1, 40)),
        "data.seed": draw(st.integers(0, 2**64)),
        "data.x_layout": draw(st.sampled_from(["grid", "uniform"])),
        "train.epochs": draw(st.integers(1, 40)),
        "train.log_every": draw(st.integers(1, 7)),
        "train.numpy.gradient": draw(st.sampled_from(["mean", "sum"])),
    }


def _strict_json(path: Path):
    return json.loads(path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(f"{path}: {name}")))


def _numbers_in(document) -> list:
    if isinstance(document, dict):
        return [n for value in document.values() for n in _numbers_in(value)]
    return [document] if isinstance(document, int | float) and not isinstance(document, bool) else []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numeric_params())
@example({"train.w_init": 1e300})  # beyond float32: infinity before the first epoch
@example({"data.true_w": 3e38, "data.n_samples": 4})  # y = true_w * x overflows float32
@example({"data.x_layout": "uniform", "data.x_low": 0.0, "data.x_high": 1e-46})  # every x is 0 in float32: w undetermined
@example({"data.x_layout": "uniform", "data.x_low": -3e38, "data.x_high": 3e38})  # the range is wider than float32
@example({"evaluate.x": 1e308})  # f(x) = w * x overflows
@example({"train.lr": 1e38})  # diverges in the first epoch
@example({"train.lr": 0.5, "train.epochs": 200})  # diverges after some finite epochs
def test_numbers_from_anywhere_train_or_fail_cleanly_and_metrics_stay_finite(tmp_path_factory, overrides):
    """generate, train and evaluate either succeed with finite metrics (a divergence reported as such) or exit 2 with one line."""
    from conftest import with_overrides, write_yaml

    folder = tmp_path_factory.mktemp("numbers")
    params = write_yaml(folder / "params.yaml", with_overrides(load_default_params(), overrides))
    dataset = folder / "data" / "dataset.npz"
    code, stderr = run_stage(generate.main, ["--params", str(params), "--out", str(dataset)])
    if code != 0:
        assert code == 2
        assert_one_error_line(stderr)
        assert str(params) in stderr or "data.x_" in stderr or "data.true_w" in stderr, stderr
        assert files_under(folder) == [params]
        event("refused by params or generate")
        return
    for variant in ("numpy", "torch"):
        code, stderr = run_stage(train.main, ["--variant", variant, "--params", str(params), "--data", str(dataset),
                                              "--history", str(folder / f"{variant}.csv"), "--model", str(folder / f"{variant}.json")])
        warned = stderr.startswith(f"gdpipe: warning: {variant} diverged at epoch ") and stderr.count("\n") == 1
        assert code == 0 and (stderr == "" or warned), stderr
    metrics_path = folder / "metrics.json"
    code, stderr = run_stage(evaluate.main, ["--params", str(params), "--data", str(dataset), "--models", str(folder / "numpy.json"),
                                             str(folder / "torch.json"), "--histories", str(folder / "numpy.csv"), str(folder / "torch.csv"),
                                             "--out", str(metrics_path), "--plot", str(folder / "curves.png")])
    if code != 0:
        assert code == 2
        assert_one_error_line(stderr)
        assert not metrics_path.exists()
        return
    metrics = _strict_json(metrics_path)
    event(f"evaluated, diverged: {sorted(v for v in ('numpy', 'torch') if metrics[v]['diverged'])}")
    assert all(math.isfinite(number) for number in _numbers_in(metrics)), metrics
    for variant in ("numpy", "torch"):
        model = _strict_json(folder / f"{variant}.json")
        assert metrics[variant]["diverged"] is (model["diverged_at_epoch"] is not None)
        assert ("prediction" in metrics[variant]) is not metrics[variant]["diverged"]


# --- Bad input: files between stages ---------------------------------------------------------

def build_workspace(folder: Path, overrides: dict | None = None) -> Path:
    """The outputs of generate, train and evaluate for the repository's params (with overrides), made in this process."""
    from conftest import with_overrides, write_yaml

    folder.mkdir(parents=True, exist_ok=True)
    params = write_yaml(folder / "params.yaml", with_overrides(load_default_params(), overrides or {}))
    steps = [(generate.main, ["--params", str(params), "--out", "data/dataset.npz"])]
    steps += [(train.main, ["--variant", v, "--params", str(params), "--data", "data/dataset.npz", "--history", f"history/{v}.csv",
                            "--model", f"models/{v}.json"]) for v in ("numpy", "torch")]
    steps += [(evaluate.main, EVALUATE_ARGS)]
    with contextlib.chdir(folder):
        for main, argv in steps:
            code, stderr = run_stage(main, argv)
            assert code == 0, stderr
    return folder


EVALUATE_ARGS = ["--params", "params.yaml", "--data", "data/dataset.npz", "--models", "models/numpy.json", "models/torch.json",
                 "--histories", "history/numpy.csv", "history/torch.csv", "--out", "metrics.json", "--plot", "plots/curves.png"]
EVALUATE_OUTS = ["metrics.json", "plots/curves.png"]
TRAIN_ARGS = ["--variant", "numpy", "--params", "params.yaml", "--data", "data/dataset.npz", "--history", "history/numpy.csv",
              "--model", "models/numpy.json"]
TRACK_ARGS = ["--params", "params.yaml", "--data", "data/dataset.npz", "--histories", "history/numpy.csv", "history/torch.csv",
              "--models", "models/numpy.json", "models/torch.json", "--metrics", "metrics.json", "--plot", "plots/curves.png",
              "--published", "published.json", "--runs", "runs.json"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Finished outputs of the lesson's params (shared: tests copy it before changing anything)."""
    return build_workspace(tmp_path_factory.mktemp("workspace") / "ws")


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


def _nan_json(path: Path) -> None:
    import re

    text, count = re.subn(r'"w": [-0-9.e]+', '"w": NaN', path.read_text())
    assert count == 1
    path.write_text(text)


def _nan_data(path: Path) -> None:
    from gdpipe import data

    dataset = data.load(path)
    x = dataset.x.copy()
    x[1] = np.nan
    data.save(data.Dataset(x=x, y=dataset.y), path)


def _track(argv):
    import track

    return track.main(argv)


def _summary(argv):
    from gdpipe import summary

    return summary.main(argv)


CORRUPT_INPUTS = [
    # (stage, its arguments, the input spoiled, how, what the line says, the outputs that must stay as they were)
    ("train", TRAIN_ARGS, "data/dataset.npz", _truncate, "not a readable data set", ["history/numpy.csv", "models/numpy.json"]),
    ("train", TRAIN_ARGS, "data/dataset.npz", _nan_data, "must be finite", ["history/numpy.csv", "models/numpy.json"]),
    ("evaluate", EVALUATE_ARGS, "data/dataset.npz", os.unlink, "no such file", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "history/torch.csv", _bad_row, "line 4: expected epoch,w,loss as numbers", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "history/numpy.csv", _nan_row, "line 3: epochs must increase from 1 and w, loss be finite", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "models/torch.json", _not_json, "not valid JSON", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "history/torch.csv", _truncate, "", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "models/torch.json", _numpy_model, "holds the numpy model, expected the torch one", EVALUATE_OUTS),
    ("evaluate", EVALUATE_ARGS, "models/numpy.json", _nan_json, "not valid JSON (NaN is not a number gdpipe accepts)", EVALUATE_OUTS),
    ("track", TRACK_ARGS, "metrics.json", _not_json, "not valid JSON", []),
    ("track", TRACK_ARGS, "history/numpy.csv", _bad_row, "line 4", []),
    ("track", TRACK_ARGS, "models/torch.json", _numpy_model, "holds the numpy model, expected the torch one", []),
    ("summary", ["metrics.json"], "metrics.json", _not_json, "not valid JSON", []),
]


@pytest.mark.parametrize(("stage", "argv", "spoiled", "spoil", "message", "kept"), CORRUPT_INPUTS,
                         ids=[f"{case[0]}-{case[2]}-{case[3].__name__}" for case in CORRUPT_INPUTS])
def test_a_corrupt_input_between_stages_is_one_line_naming_the_file(workspace, tmp_path, monkeypatch, stage, argv, spoiled, spoil, message, kept):
    import shutil

    folder = tmp_path / "ws"
    shutil.copytree(workspace, folder)
    before = {name: (folder / name).read_bytes() for name in kept}
    spoil(folder / spoiled)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    main = {"train": train.main, "evaluate": evaluate.main, "track": _track, "summary": _summary}[stage]
    code, stderr = run_stage(main, argv)
    assert code == 2
    assert_one_error_line(stderr, f"gdpipe: error: {spoiled}: ", message)
    assert {name: (folder / name).read_bytes() for name in kept} == before, "an earlier result was lost"
    assert not (folder / "published.json").exists() and not (folder / "runs.json").exists() and not (tmp_path / "store").exists()
    assert not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def test_evaluate_interrupted_while_drawing_keeps_both_previous_outputs(workspace, tmp_path, monkeypatch):
    """The plot (most of the stage's time) is drawn before either file is replaced: Ctrl-C then leaves both as they were."""
    import shutil

    folder = tmp_path / "ws"
    shutil.copytree(workspace, folder)
    monkeypatch.chdir(folder)
    before = {name: (folder / name).read_bytes() for name in EVALUATE_OUTS}
    text = (folder / "params.yaml").read_text()
    assert text.count("  x: 5.0\n") == 1
    (folder / "params.yaml").write_text(text.replace("  x: 5.0\n", "  x: 7.0\n"))  # a new result, had it got that far

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "draw_curves", interrupted)
    code, stderr = run_stage(evaluate.main, EVALUATE_ARGS)
    assert code == 130 and stderr == "gdpipe: interrupted (SIGINT); no output was half-written\n"
    assert {name: (folder / name).read_bytes() for name in EVALUATE_OUTS} == before


def test_models_and_histories_are_matched_by_variant_not_by_order(tmp_path, monkeypatch):
    """evaluate pairs models/<variant>.json with history/<variant>.csv in any order; a missing or doubled variant is one line."""
    from gdpipe.model import train_outputs

    # The lesson's summed gradient: the two variants' trajectories differ, so a mix-up would show.
    folder = build_workspace(tmp_path / "ws", {"train.numpy.gradient": "sum", "train.epochs": 5})
    monkeypatch.chdir(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["numpy"]["w"] != metrics["torch"]["w"] and metrics["numpy"]["loss"] != metrics["torch"]["loss"]
    swapped = [*EVALUATE_ARGS]  # the histories in the other order than the models
    start = swapped.index("--histories") + 1
    swapped[start : start + 2] = ["history/torch.csv", "history/numpy.csv"]
    swapped[swapped.index("--out") + 1] = "swapped.json"
    assert run_stage(evaluate.main, swapped) == (0, "")
    assert (folder / "swapped.json").read_bytes() == (folder / "metrics.json").read_bytes()
    assert train_outputs(["m/torch.json", "m/numpy.json"], ["h/numpy.csv", "h/torch.csv"]) == {
        "numpy": (Path("m/numpy.json"), Path("h/numpy.csv")), "torch": (Path("m/torch.json"), Path("h/torch.csv"))}
    from gdpipe.errors import InputError

    with pytest.raises(InputError, match="expected one <variant>.json model"):  # --models and --histories swapped
        train_outputs(["h/numpy.csv", "h/torch.csv"], ["m/numpy.json", "m/torch.json"])

    doubled = [*EVALUATE_ARGS]
    doubled[doubled.index("models/torch.json")] = "models/numpy.json"
    before = (folder / "metrics.json").read_bytes()
    code, stderr = run_stage(evaluate.main, doubled)
    assert code == 2 and (folder / "metrics.json").read_bytes() == before
    assert_one_error_line(stderr, "expected one <variant>.json model and one <variant>.csv history for each of numpy, torch",
                          "models/numpy.json, models/numpy.json, history/numpy.csv, history/torch.csv")


@publishes_in_process
@pytest.mark.parametrize("lr", [0.5, 1e38], ids=["after-some-epochs", "in-the-first-epoch"])
def test_a_diverged_run_is_reported_as_diverged_never_as_numbers(tmp_path, monkeypatch, lr):
    """metrics.json, the summary and MLflow say `diverged`; no NaN or infinity is published as a result."""
    from mlflow import MlflowClient

    from gdpipe.summary import format_summary

    folder = build_workspace(tmp_path / "ws", {"train.lr": lr})
    metrics = _strict_json(folder / "metrics.json")
    for variant in ("numpy", "torch"):
        assert metrics[variant]["diverged"] is True and metrics[variant]["diverged_at_epoch"] >= 1
        assert not {"w", "loss", "prediction", "abs_error"} & set(metrics[variant])
        assert f"{variant:<8} diverged at epoch {metrics[variant]['diverged_at_epoch']}" in format_summary(metrics)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, stderr = run_stage(_track, TRACK_ARGS)
    assert code == 0, stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    assert sorted(run.data.tags["variant"] for run in runs) == ["numpy", "torch"]
    for run in runs:
        variant = run.data.tags["variant"]
        assert run.info.status == "FINISHED" and run.data.tags["gdpipe.status"] == "diverged"
        assert run.data.tags["gdpipe.diverged_at_epoch"] == str(metrics[variant]["diverged_at_epoch"])
        assert "prediction" not in run.data.metrics and "abs_error" not in run.data.metrics
        points = [point for key in ("w", "loss") for point in client.get_metric_history(run.info.run_id, key)]
        assert all(math.isfinite(point.value) and point.step < metrics[variant]["diverged_at_epoch"] for point in points)
        assert all(math.isfinite(value) for value in run.data.metrics.values())


# --- Determinism -----------------------------------------------------------------------------

SUMS_SCRIPT = """
import numpy as np
from gdpipe import linear
rng = np.random.default_rng(7)
n = 3 * linear.CHUNK + 17
x = rng.uniform(-1, 1, n).astype(np.float32)
y = (2 * x + rng.normal(0, 0.3, n)).astype(np.float32)
print(*(float(v).hex() for v in (*linear.residual_sums(np.float32(1.37), x, y), linear.dot64(x, y), linear.dot64(x, x))))
"""
# Other kernels than the one this machine picks: OpenBLAS's SSE3 baseline, NumPy without its AVX loops.
KERNELS = [{}, {"OPENBLAS_CORETYPE": "Prescott"}, {"NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR AVX2 FMA3"}]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the kernels named are x86-64's")
def test_sums_over_the_data_do_not_depend_on_the_kernel_the_machine_picks():
    """Σr², Σxr, Σxy and Σx² are bit-identical whichever BLAS or SIMD kernel runs (each in its own process)."""
    import subprocess

    results = set()
    for kernel in KERNELS:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")}
        done = subprocess.run([sys.executable, "-c", SUMS_SCRIPT], env=env | kernel | {"PYTHONPATH": str(REPO / "src")},
                              capture_output=True, text=True, check=True)
        results.add(done.stdout)
    assert len(results) == 1, results


def test_sums_over_the_data_are_float64_accurate_where_float32_accumulation_is_not():
    """Against math.fsum (exact, then rounded once): float64 pairwise sums are off by rounding, a float32 running sum is not close."""
    from gdpipe import linear

    rng = np.random.default_rng(3)
    n = 5 * linear.CHUNK + 3
    x = rng.uniform(0, 3, n).astype(np.float32)
    y = (2 * x + rng.normal(0, 1, n)).astype(np.float32)
    w = np.float32(1.9)
    r = (w * x - y).astype(np.float64)
    exact = {"rr": math.fsum((r * r).tolist()), "xr": math.fsum((x * r).tolist()), "xy": math.fsum((x.astype(np.float64) * y).tolist())}
    scale = {"rr": exact["rr"], "xr": math.fsum(np.abs(x * r).tolist()), "xy": math.fsum(np.abs(x.astype(np.float64) * y).tolist())}
    sum_rr, sum_xr = linear.residual_sums(w, x, y)
    ours = {"rr": sum_rr, "xr": sum_xr, "xy": linear.dot64(x, y)}
    for key in exact:
        assert abs(ours[key] - exact[key]) <= 1e-11 * scale[key], key  # float64 rounding over 3e5 terms
    float32_running = float(np.cumsum((x * y).astype(np.float32), dtype=np.float32)[-1])
    assert abs(float32_running - exact["xy"]) > 1e-6 * scale["xy"]  # the size at which float32 visibly differs


# --- Interruptions ---------------------------------------------------------------------------

def src_env(**extra: str) -> dict[str, str]:
    """A child process's environment that imports this checkout's src/ (never another checkout's install)."""
    from conftest import child_env

    return child_env(**({"PYTHONPATH": str(REPO / "src")} | extra))


def test_a_failed_or_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    from gdpipe.files import atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    for error in (OSError("No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_write(target) as handle:
            handle.write("new, half of it")
            raise error
        assert target.read_text() == "old\n" and files_under(tmp_path) == [target]


KILLED_WRITER = """
import sys, time
from gdpipe.files import atomic_write
with atomic_write(sys.argv[1]) as handle:
    handle.write("new, half of it")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_removes_its_leftover(tmp_path):
    import signal
    import subprocess

    from gdpipe.files import write_json

    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=src_env())
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    assert target.read_text() == "old\n"
    (leftover,) = (path for path in files_under(tmp_path) if path != target)  # SIGKILL leaves no chance to clean up
    assert leftover.name.startswith(f".metrics.json.{writer.pid}.")
    ignored = subprocess.run(["git", "check-ignore", "-q", f"history/{leftover.name}"], cwd=REPO)
    assert ignored.returncode == 0, "git would show a killed writer's temporary file"
    live = tmp_path / f".metrics.json.{os.getpid()}.abc.tmp"  # a writer that is still running keeps its file
    live.write_text("busy")
    write_json(target, {"w": 2.0})
    assert json.loads(target.read_text()) == {"w": 2.0}
    assert files_under(tmp_path) == sorted([target, live])


# A test hook, installed as sitecustomize in the child: it touches a file when training starts, so
# a signal can be sent while the process is certainly inside training.
TRAINING_STARTED_HOOK = '''
import os
from pathlib import Path

if os.environ.get("GDPIPE_TEST_TRAINING_STARTED"):
    from gdpipe import training

    _trainer_for = training.trainer_for

    def _announcing_trainer_for(*args, **kwargs):
        train = _trainer_for(*args, **kwargs)

        def announced(*args, **kwargs):
            Path(os.environ["GDPIPE_TEST_TRAINING_STARTED"]).touch()
            return train(*args, **kwargs)

        return announced

    training.trainer_for = _announcing_trainer_for
'''


@pytest.fixture
def reaper():
    """Processes a test starts; any still running when the test ends (it failed half-way) is killed."""
    processes = []
    yield processes.append
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(condition, process, seconds: float = 60, what: str = "") -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigint_sigterm_and_sigkill_during_training_keep_the_previous_outputs(workspace, tmp_path, reaper):
    """Ctrl-C and kill exit 130 and 143 with one line; SIGKILL too leaves the previous history and model, and no temporary file."""
    import shutil
    import signal
    import subprocess

    from conftest import with_overrides, write_yaml

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(TRAINING_STARTED_HOOK)
    cases = {"SIGINT": ("numpy", signal.SIGINT, 130), "SIGTERM": ("torch", signal.SIGTERM, 143), "SIGKILL": ("numpy", signal.SIGKILL, -9)}
    running = {}
    for name, (variant, _, _) in cases.items():
        folder = tmp_path / name
        shutil.copytree(workspace, folder)
        write_yaml(folder / "params.yaml", with_overrides(load_default_params(), {"train.epochs": 3_000_000}))  # about a minute
        outputs = [f"history/{variant}.csv", f"history/{variant}.timing.json", f"models/{variant}.json"]
        before = {output: (folder / output).read_bytes() for output in outputs}
        argv = [sys.executable, str(REPO / "stages" / "train.py"), *TRAIN_ARGS]
        argv[argv.index("numpy")] = variant
        env = src_env(PYTHONPATH=f"{hook}{os.pathsep}{REPO / 'src'}", GDPIPE_TEST_TRAINING_STARTED=str(folder / "started"))
        process = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reaper(process)
        running[name] = (folder, process, before)
    for name, (folder, process, before) in running.items():
        wait_for((folder / "started").exists, process, what="training started")
        process.send_signal(cases[name][1])
    for name, (folder, process, before) in running.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == cases[name][2], (name, stderr)
        if name != "SIGKILL":
            assert stderr == f"gdpipe: {'interrupted' if name == 'SIGINT' else 'terminated'} ({name}); no output was half-written\n"
        assert {output: (folder / output).read_bytes() for output in before} == before, f"{name}: an earlier result was lost"
        assert not [path.name for path in folder.rglob("*") if path.name.endswith(".tmp")], name


DROPPED_SIGNAL = """
import signal, sys, time, weakref
from gdpipe.errors import run_main

class Thing:
    pass

def main(argv):
    def finalizer():
        signal.raise_signal(signal.SIGINT if argv[0] == "SIGINT" else signal.SIGTERM)
        sum(range(1000))  # the handler runs here, inside the finalizer, where Python drops exceptions
    thing = Thing()
    weakref.finalize(thing, finalizer)
    del thing
    time.sleep(10)
    print("went on as if never interrupted")

sys.exit(run_main(main, sys.argv[1:]))
"""


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_that_arrives_in_a_finalizer_still_stops_the_command(name, code):
    """Python prints and drops an exception raised in a finalizer or weakref callback (SQLAlchemy has many): run_main delivers it again."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", DROPPED_SIGNAL, name], env=src_env(), capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert done.stderr == f"gdpipe: {'interrupted' if name == 'SIGINT' else 'terminated'} ({name}); no output was half-written\n"


OUTPUTS = ["data/dataset.npz", "history/numpy.csv", "history/torch.csv", "models/numpy.json", "models/torch.json", "metrics.json",
           "plots/curves.png", "published.json"]


def hashes(repo: Path, names=OUTPUTS) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() for name in names}


def test_ctrl_c_during_dvc_repro_leaves_no_partial_output_and_the_next_repro_gives_the_same_metrics(reproduced_repo, own_reproduced_repo):
    """Ctrl-C (SIGINT to dvc and its stage) in the middle of training; then the next `dvc repro` completes with the same results."""
    import signal
    import subprocess

    from conftest import VENV_BIN, child_env, dvc

    repo = own_reproduced_repo
    (repo / "src" / "sitecustomize.py").write_text(TRAINING_STARTED_HOOK)  # stage commands run with PYTHONPATH=src
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  epochs: 100\n", "  epochs: 3000000\n"))
    started = repo / "started"
    process = subprocess.Popen([str(VENV_BIN / "dvc"), "repro"], cwd=repo, env=child_env(GDPIPE_TEST_TRAINING_STARTED=str(started)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(started.exists, process, what="training started")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0
    assert stderr.count("gdpipe: interrupted (SIGINT); no output was half-written\n") == 1 and "Traceback" not in stdout + stderr, stderr
    assert not (repo / "history" / "numpy.csv").exists()  # DVC removed the stage's outputs before running it; none is half-written
    assert not [path for path in repo.rglob("*.tmp") if ".dvc" not in path.parts]
    (repo / "params.yaml").write_text(params)
    (repo / "src" / "sitecustomize.py").unlink()
    dvc(repo, "repro")  # DVC restores train@numpy from its run cache: that result was complete
    assert hashes(repo) == hashes(reproduced_repo)
    assert (repo / "dvc.lock").read_text() == (reproduced_repo / "dvc.lock").read_text()


def test_same_params_give_byte_identical_outputs_on_a_forced_rerun(reproduced_repo, own_reproduced_repo):
    """`dvc repro -f` reruns every stage, in another folder: data, histories, models, metrics, plot and fingerprints are
    the same bytes; only the training times (kept beside the histories for MLflow, out of DVC and git) differ."""
    from conftest import dvc, stages_run

    repo = own_reproduced_repo
    times = [f"history/{variant}.timing.json" for variant in ("numpy", "torch")]
    first_times = hashes(repo, times)
    done = dvc(repo, "repro", "--force")
    assert stages_run(done.stdout) == {"generate", "train@numpy", "train@torch", "evaluate", "track"}
    assert hashes(repo) == hashes(reproduced_repo)
    assert hashes(repo, times) != first_times  # the times did change: they are not part of any hashed output


def runs_in_store(db: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in a sqlite store, read directly (nothing when the store is not made yet)."""
    import sqlite3

    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as connection:
            return connection.execute("SELECT run_uuid, status FROM runs").fetchall()
    except sqlite3.OperationalError:  # the tables are being created, or a writer holds the lock
        return []


@pytest.fixture(scope="module")
def long_workspace(tmp_path_factory) -> Path:
    """Outputs with many epochs logged: publishing each run's history takes about a second."""
    return build_workspace(tmp_path_factory.mktemp("long") / "ws", {"train.epochs": EPOCHS_LONG})


EPOCHS_LONG = 2000


@publishes_in_process
def test_sigint_or_sigterm_while_publishing_marks_the_run_killed_and_the_next_publish_completes(long_workspace, tmp_path, monkeypatch, reaper):
    """Ctrl-C (twice, impatiently) or kill while a run is being logged: one line, exit 130/143, the run KILLED, nothing written;
    publishing again makes complete runs."""
    import shutil
    import signal
    import subprocess
    import time

    from mlflow import MlflowClient

    cases = {"SIGINT": ([signal.SIGINT, signal.SIGINT], 130, "interrupted"), "SIGTERM": ([signal.SIGTERM], 143, "terminated")}
    running = {}
    for name in cases:
        folder = tmp_path / name
        shutil.copytree(long_workspace, folder)
        db = tmp_path / f"{name}-store" / "mlflow.db"
        process = subprocess.Popen([sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS], cwd=folder,
                                   env=src_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reaper(process)
        running[name] = (folder, db, process)
    for name, (folder, db, process) in running.items():
        wait_for(lambda db=db: any(status == "RUNNING" for _, status in runs_in_store(db)), process, what="a run was created")
        for signum in cases[name][0]:
            process.send_signal(signum)
            time.sleep(0.05)
    for name, (folder, db, process) in running.items():
        stdout, stderr = process.communicate(timeout=60)
        signals, code, word = cases[name]
        runs = dict(runs_in_store(db))
        killed = [run_id for run_id, status in runs.items() if status == "KILLED"]
        assert len(killed) == 1, (name, runs, process.returncode, stderr[-6000:])
        killed = killed[0]
        assert process.returncode == code and set(runs.values()) <= {"KILLED", "FINISHED"}, (runs, stderr)  # never RUNNING
        assert re.fullmatch(rf"gdpipe: {word} \({name}\); (numpy|torch) run {killed} marked KILLED; no output was half-written\n", stderr), stderr
        assert not (folder / "published.json").exists() and not (folder / "runs.json").exists()
        assert not [path for path in folder.rglob("*.tmp")]
    folder, db, _ = running["SIGTERM"]
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, stderr = run_stage(_track, TRACK_ARGS)
    assert code == 0, stderr
    published = json.loads((folder / "runs.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    assert dict(runs_in_store(db)) == {killed: "KILLED"} | {run["run_id"]: "FINISHED" for run in published.values()}
    for run in published.values():
        assert len(client.get_metric_history(run["run_id"], "loss")) == EPOCHS_LONG


def test_a_run_left_running_by_sigkill_while_publishing_is_marked_killed_by_the_next_publish(long_workspace, tmp_path, reaper):
    """kill -9 gives the publisher no chance to mark its run; the next publish to the sqlite store does, and says so."""
    import shutil
    import signal
    import subprocess

    folder = tmp_path / "ws"
    shutil.copytree(long_workspace, folder)
    db = tmp_path / "store" / "mlflow.db"
    env = src_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    process = subprocess.Popen([sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS], cwd=folder, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reaper(process)
    while True:  # kill it while one of its runs is RUNNING, as seen while it is stopped (it could finish in between)
        wait_for(lambda: any(status == "RUNNING" for _, status in runs_in_store(db)), process, what="a run was created")
        process.send_signal(signal.SIGSTOP)
        if any(status == "RUNNING" for _, status in runs_in_store(db)):
            break
        process.send_signal(signal.SIGCONT)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    from mlflow import MlflowClient

    # Through MLflow, which may write: it rolls back the transaction kill -9 cut short (a read-only look could not).
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    (abandoned,) = [run.info.run_id for run in runs if run.info.status == "RUNNING"]

    done = subprocess.run([sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    published = json.loads((folder / "runs.json").read_text())
    assert dict(runs_in_store(db)) == {abandoned: "KILLED"} | {run["run_id"]: "FINISHED" for run in published.values()}
    assert f": run {abandoned} was left RUNNING by a publisher that was killed; marked KILLED\n" in done.stdout


# --- Concurrency -----------------------------------------------------------------------------

PUBLISHER = """
import json, sys, time
from pathlib import Path
from gdpipe import config, data, tracking
from gdpipe.files import read_json
from gdpipe.record import build_record

workspace, uri, go, lrs = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), [float(lr) for lr in sys.argv[4:]]
params = config.load(workspace / "params.yaml")
metrics = read_json(workspace / "metrics.json")
dataset = data.load(workspace / "data/dataset.npz")
while not go.exists():  # both workers start publishing at the same moment, on a store that does not exist yet
    time.sleep(0.005)
for lr in lrs:
    variant_params = params.model_copy(update={"train": params.train.model_copy(update={"lr": lr})})
    records = [build_record(variant_params, metrics, workspace / "data/dataset.npz", v, workspace / f"history/{v}.csv",
                            workspace / f"models/{v}.json", workspace / "metrics.json", (workspace / "plots/curves.png",), {})
               for v in ("numpy", "torch")]
    published = tracking.publish(records, dataset, "gradient-descent", uri)
    print(json.dumps({v: [run["run_id"], run["created"]] for v, run in published.items()}), flush=True)
"""


def test_parallel_publishers_on_one_fresh_store_lose_nothing_and_never_duplicate_a_result(workspace, tmp_path, reaper):
    """Two processes (like two `dvc exp` workers) publish 2 results of 2 runs each at once, one result in common."""
    import subprocess

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    go = tmp_path / "go"
    lrs = {"a": ["0.01", "0.011"], "b": ["0.01", "0.021"]}  # 0.01: the same result in both
    workers = {name: subprocess.Popen([sys.executable, "-c", PUBLISHER, str(workspace), uri, str(go), *values], env=src_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, values in lrs.items()}
    for worker in workers.values():
        reaper(worker)
    go.touch()
    outputs = {}
    for name, worker in workers.items():
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0 and stderr == "", stderr
        outputs[name] = [json.loads(line) for line in stdout.splitlines()]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id], max_results=100)
    assert len(runs) == 6 and all(run.info.status == "FINISHED" for run in runs)  # 3 learning rates x 2 variants
    assert len({run.data.tags["gdpipe.fingerprint"] for run in runs}) == 6
    reported = {run_id for output in outputs.values() for published in output for run_id, _ in published.values()}
    assert reported == {run.info.run_id for run in runs}
    shared = [outputs["a"][0][v] for v in ("numpy", "torch")], [outputs["b"][0][v] for v in ("numpy", "torch")]
    assert [run_id for run_id, _ in shared[0]] == [run_id for run_id, _ in shared[1]]  # one run for the common result
    assert sorted(created for pair in shared for _, created in pair) == [False, False, True, True]
    for run in runs:
        assert [point.step for point in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 101))
        assert run.data.params["train.lr"] in {lr for values in lrs.values() for lr in values}
        assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} == {f"{run.data.tags['variant']}.csv", "metrics.json", "curves.png"}


@publishes_in_process
def test_a_store_that_fails_mid_publish_is_one_line_and_the_run_is_marked_failed(workspace, tmp_path, monkeypatch):
    """The artifact folder cannot be made (a file is in the way): exit 2, one line naming the run marked FAILED."""
    import shutil

    from mlflow import MlflowClient

    folder = tmp_path / "ws"
    shutil.copytree(workspace, folder)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "in-the-way").write_text("a file where the artifact folder should be")
    client = MlflowClient(uri)
    client.create_experiment("gradient-descent", artifact_location=(tmp_path / "in-the-way" / "artifacts").as_uri())
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, stderr = run_stage(_track, TRACK_ARGS)
    assert code == 2
    ((run_id, status),) = runs_in_store(tmp_path / "store" / "mlflow.db")
    assert status == "FAILED"
    assert_one_error_line(stderr, f"gdpipe: error: MLflow tracking store {uri} failed while publishing numpy: ", f"; numpy run {run_id} marked FAILED\n")
    assert not (folder / "published.json").exists() and not (folder / "runs.json").exists()


# --- Security --------------------------------------------------------------------------------

def test_a_yaml_tag_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/apply:subprocess.call", "!!python/object/new:os.system"):
        params = tmp_path / "params.yaml"
        params.write_text((REPO / "params.yaml").read_text().replace("experiment: gradient-descent", f"experiment: {tag} [touch {marker}]"))
        code, stderr = run_stage(config.main, [str(params)])
        assert code == 2 and not marker.exists()
        assert_one_error_line(stderr, str(params), "could not determine a constructor for the tag")


def test_the_mlflow_ui_listens_on_localhost_unless_the_user_asks_otherwise():
    """`make ui` (the only server gdpipe starts) binds 127.0.0.1; UI_HOST=0.0.0.0 is the user's explicit choice."""
    import subprocess

    def ui_command(*overrides: str) -> str:
        done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "ui", *overrides], cwd=REPO, capture_output=True, text=True, check=True)
        return done.stdout

    assert " --host 127.0.0.1 " in ui_command()
    assert " --host 0.0.0.0 " in ui_command("UI_HOST=0.0.0.0")
    sources = [REPO / "Makefile", *(REPO / "src" / "gdpipe").glob("*.py"), *(REPO / "stages").glob("*.py")]
    starters = [path.name for path in sources if re.search(r"mlflow\W+(ui|server)\b|0\.0\.0\.0|host=", path.read_text())]
    assert starters == ["Makefile"], starters  # no other place starts a server or binds every interface


# A test hook, installed as sitecustomize: every attempt to reach the network is logged and refused.
NO_NETWORK_HOOK = '''
import os
import socket

def _refuse(what):
    with open(os.environ["GDPIPE_TEST_NETWORK_LOG"], "a") as log:
        log.write(repr(what)[:300] + "\\n")
    raise OSError("this test forbids network access")

def _guard(method):
    def guarded(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse((method.__name__, address))
        return method(self, address, *args)
    return guarded

for _name in ("connect", "connect_ex", "sendto"):
    setattr(socket.socket, _name, _guard(getattr(socket.socket, _name)))
socket.getaddrinfo = lambda *args, **kwargs: _refuse(("getaddrinfo", args))
'''


@pytest.fixture(scope="module")
def guarded_track_run(workspace, tmp_path_factory):
    """The track stage on a fresh default store, with planted credentials in the environment and the network forbidden."""
    import shutil
    import subprocess
    import uuid

    root = tmp_path_factory.mktemp("guarded")
    folder = root / "ws"
    shutil.copytree(workspace, folder)
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_NETWORK_HOOK)
    planted = {key: f"planted-{key.lower()}-{uuid.uuid4().hex}" for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}
    env = src_env(PYTHONPATH=f"{hook}{os.pathsep}{REPO / 'src'}", GDPIPE_TEST_NETWORK_LOG=str(root / "network.log"), **planted)
    # gdpipe's own default must keep MLflow quiet: nothing that turns telemetry off by itself (CI, pytest).
    for name in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder, done, planted, root / "network.log"


def test_no_network_is_needed_with_the_default_store(guarded_track_run):
    folder, done, _, network_log = guarded_track_run
    assert (folder / "mlruns" / "mlflow.db").exists() and done.stdout.count("new run") == 2
    assert not network_log.exists(), network_log.read_text()


@publishes_in_process
def test_planted_credentials_reach_no_param_tag_artifact_file_or_output(guarded_track_run, tmp_path):
    """MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN: in no run's params, tags or artifacts, no file of the repo, no output."""
    from mlflow import MlflowClient

    folder, done, planted, _ = guarded_track_run
    secrets = list(planted.values())
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    for run in client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id]):
        texts[f"{run.info.run_id} params"] = json.dumps(run.data.params)
        texts[f"{run.info.run_id} tags"] = json.dumps(run.data.tags)
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        texts |= {str(path): path.read_text(errors="replace") for path in files_under(downloaded)}
    # Every file the stage could have written, byte for byte: runs.json, published.json, the store, its artifacts, logged models.
    texts |= {str(path): path.read_bytes().decode("latin-1") for path in files_under(folder)}
    assert len(texts) > 20
    leaks = {name for name, text in texts.items() for secret in secrets if secret in text}
    assert not leaks, leaks


@publishes_in_process
def test_a_password_in_the_tracking_uri_or_the_environment_is_never_printed(workspace, tmp_path, monkeypatch):
    """MLflow's own error message repeats the URI with its password; gdpipe's line shows neither it nor a token."""
    import shutil
    import socket

    folder = tmp_path / "ws"
    shutil.copytree(workspace, folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-in-uri@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret-token")
    code, stderr = run_stage(_track, TRACK_ARGS)
    assert code == 2
    assert_one_error_line(stderr, f"MLflow tracking store http://127.0.0.1:{port} did not answer")
    assert "s3cret" not in stderr and "alice" not in stderr, stderr
