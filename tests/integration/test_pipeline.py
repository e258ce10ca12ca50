"""End to end: real `dvc repro` in throwaway copies of the repository."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from support import (
    OUTPUTS,
    REPO,
    TRAINING_STARTED_HOOK,
    VENV_BIN,
    child_env,
    dvc,
    make,
    runs_in_store,
    stages_run,
    wait_for,
)

ALL_STAGES = {"generate", "train@numpy", "train@torch", "evaluate", "track"}


def test_repro_produces_the_expected_metrics(reproduced_repo):
    metrics = json.loads((reproduced_repo / "metrics.json").read_text())
    for variant in ("numpy", "torch"):
        section = metrics[variant]
        assert section["diverged"] is False and section["epochs_trained"] == 100
        assert section["w"] == pytest.approx(2.0, abs=1e-6)
        assert f"{section['prediction']:.3f}" == "10.000"
        assert section["abs_error"] == pytest.approx(abs(section["prediction"] - 10.0)) and section["abs_error"] < 1e-5
        assert section["w_star_distance"] == pytest.approx(abs(section["w"] - 2.0))
        assert 0 <= section["loss"] < 1e-10
    assert metrics["optimum"] == {"w_star": 2.0, "prediction": 10.0, "true_value": 10.0, "x": 5.0}
    assert 0 <= metrics["parity"]["max_abs_w_diff"] < 1e-6
    history = (reproduced_repo / "history" / "numpy.csv").read_text().splitlines()
    assert history[0] == "epoch,w,loss" and history[1] == "1,0.3,30.0" and len(history) == 101
    assert (reproduced_repo / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_are_deterministic_so_the_committed_lock_holds(reproduced_repo):
    """A fresh checkout's repro reproduces dvc.lock and metrics.json as committed: git status stays clean."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=reproduced_repo, capture_output=True, text=True, check=True
    )
    assert status.stdout == "", (
        "outputs differ from the committed dvc.lock/metrics.json (rerun dvc repro and commit):\n" + status.stdout
    )
    assert json.loads((reproduced_repo / "metrics.json").read_text()) == json.loads((REPO / "metrics.json").read_text())


def test_second_repro_runs_nothing(reproduced_repo):
    done = dvc(reproduced_repo, "repro")
    assert stages_run(done.stdout) == set(), done.stdout


def _set_param(repo: Path, section: str, key: str, value: object) -> None:
    yaml = YAML()  # round-trip: keeps the comments of params.yaml
    path = repo / "params.yaml"
    document = yaml.load(path)
    document[section][key] = value
    yaml.dump(document, path)


def test_repro_reruns_exactly_what_a_change_touches(own_reproduced_repo):
    repo = own_reproduced_repo

    _set_param(repo, "train", "lr", 0.02)
    assert stages_run(dvc(repo, "repro").stdout) == {"train@numpy", "train@torch", "evaluate", "track"}

    _set_param(repo, "evaluate", "x", 7.0)
    assert stages_run(dvc(repo, "repro").stdout) == {"evaluate", "track"}
    assert json.loads((repo / "metrics.json").read_text())["optimum"]["true_value"] == 14.0

    # A typo changes no key the trainings declare, but track depends on the whole train section:
    # it reruns, reads the whole file and stops `dvc repro` with one line.
    _set_param(repo, "train", "learning_rate", 0.5)
    done = dvc(repo, "repro", check=False)
    assert done.returncode != 0 and stages_run(done.stdout) == {"track"}
    assert (
        "gdpipe: error: params.yaml: unknown key 'train.learning_rate' (allowed here: lr, epochs"
        in done.stderr + done.stdout
    )
    assert "Traceback" not in done.stderr + done.stdout


def test_make_repro_stops_a_bad_params_file_before_dvc_touches_any_output(own_reproduced_repo):
    """DVC removes a stage's outputs before running it; make repro checks params.yaml first, so nothing goes."""
    repo = own_reproduced_repo
    outputs = {
        path: path.read_bytes()
        for path in (repo / "data" / "dataset.npy", repo / "history" / "numpy.csv", repo / "metrics.json")
    }
    _set_param(repo, "data", "sead", 1)
    done = make(repo, "repro")
    assert done.returncode == 2 and stages_run(done.stdout) == set()
    gdpipe_lines = [line for line in done.stderr.splitlines() if line.startswith("gdpipe")]
    assert gdpipe_lines == [
        "gdpipe: error: params.yaml: unknown key 'data.sead' "
        "(allowed here: n_samples, true_w, noise_std, seed, x_layout, x_low, x_high)"
    ]
    assert {path: path.read_bytes() for path in outputs} == outputs


def _dvc_stage_commands() -> dict[str, tuple[str, list[str]]]:
    """Each stage's command (with ${item.variant} filled in) and its declared deps."""
    spec = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())
    commands = {}
    for name, stage in spec["stages"].items():
        for variant in stage.get("matrix", {}).get("variant", [None]):
            fill = (lambda s, v=variant: s.replace("${item.variant}", v)) if variant else (lambda s: s)
            address = f"{name}@{variant}" if variant else name
            commands[address] = (fill(stage["cmd"]), [fill(dep) for dep in stage["deps"]])
    return commands


# The heavy libraries (a second or so to import) and the one stage that may import each.
HEAVY_IMPORTS = {"torch": "train@torch", "mlflow": "track", "matplotlib": "evaluate"}


@pytest.mark.parametrize("address", sorted(ALL_STAGES))
def test_each_stage_declares_every_package_module_it_runs(reproduced_repo, tmp_path, address):
    """If a stage ran gdpipe code that no dep of dvc.yaml covers (a file, or a folder holding it), DVC would not
    rerun it when that code changes. And torch, mlflow and matplotlib are imported only by the stage that needs each."""
    cmd, deps = _dvc_stage_commands()[address]
    script, *args = shlex.split(cmd.split("${py}", 1)[1])
    report = tmp_path / "modules.txt"
    probe = (
        "import atexit, os, runpy, sys;"
        "atexit.register(lambda: open(os.environ['MODULES_REPORT'], 'w').write(' '.join(sys.modules)));"
        "script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
    )
    env = child_env(PYTHONPATH="src", MODULES_REPORT=str(report))
    subprocess.run([sys.executable, "-c", probe, script, *args], cwd=reproduced_repo, env=env, check=True)
    modules = set(report.read_text().split())
    ran = {_source(name) for name in modules if name.startswith("gdpipe.")}
    assert script in deps
    uncovered = {path for path in ran if not any(path == dep or path.startswith(f"{dep}/") for dep in deps)}
    assert uncovered == set(), f"{address} runs modules no dep in dvc.yaml covers"
    heavy = {library for library, stage in HEAVY_IMPORTS.items() if library in modules}
    assert heavy == {library for library, stage in HEAVY_IMPORTS.items() if stage == address}
    assert dvc(reproduced_repo, "status").stdout.strip() == "Data and pipelines are up to date.", (
        "rerunning a stage changed its outputs"
    )


def _source(module: str) -> str:
    """src/gdpipe/... of a gdpipe module or package, as dvc.yaml names paths."""
    path = Path("src", *module.split("."))
    return str(path / "__init__.py") if (REPO / path).is_dir() else f"{path}.py"


def test_the_package_root_runs_no_code():
    """Every stage imports src/gdpipe/__init__.py, which no dep lists: it must stay a docstring, so no change to it can
    change a result.
    """
    tree = ast.parse((REPO / "src" / "gdpipe" / "__init__.py").read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant)


def test_stages_use_the_project_venv_even_from_another_activated_venv(reproduced_repo, tmp_path):
    """A user's own virtualenv first on PATH (with a python that cannot run gdpipe) changes nothing."""
    foreign = tmp_path / "other-venv" / "bin"
    foreign.mkdir(parents=True)
    for name in ("python", "python3"):
        (foreign / name).write_text("#!/bin/sh\necho 'not the project venv' >&2\nexit 97\n")
        (foreign / name).chmod(0o755)
    env = child_env(VIRTUAL_ENV=str(foreign.parent))
    env["PATH"] = f"{foreign}{os.pathsep}{env['PATH']}"
    done = dvc(reproduced_repo, "repro", "--force", "--single-item", "generate", env=env)
    assert stages_run(done.stdout) == {"generate"} and "not the project venv" not in done.stderr


def test_dvc_repro_without_the_venv_says_to_run_make_repro_first(own_reproduced_repo):
    """Not bash's "No such file or directory" (exit 127) but one line; GDPIPE_PYTHON names another environment."""
    repo = own_reproduced_repo
    (repo / ".venv").unlink()  # the copy's symlink to this checkout's venv
    done = dvc(repo, "repro", "--force", "--single-item", "generate", check=False)
    assert done.returncode != 0
    gdpipe_lines = [line for line in done.stderr.splitlines() if line.startswith("gdpipe")]
    assert gdpipe_lines == [
        f"gdpipe: error: no Python at {repo}/.venv/bin/python: run 'make repro' once to create .venv, "
        "or set GDPIPE_PYTHON to a Python with gdpipe's dependencies"
    ]
    done = dvc(repo, "repro", "--force", "--single-item", "generate", env=child_env(GDPIPE_PYTHON=sys.executable))
    assert stages_run(done.stdout) == {"generate"}


def test_nothing_phones_home():
    dvc_config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in dvc_config and "check_update = false" in dvc_config
    assert "export MLFLOW_DISABLE_TELEMETRY := true" in (REPO / "Makefile").read_text()
    assert '"MLFLOW_DISABLE_TELEMETRY": "true"' in (REPO / "src" / "gdpipe" / "track" / "__init__.py").read_text()


# --- interrupted and forced reruns ---------------------------------------------------------


def hashes(repo: Path, names=OUTPUTS) -> dict[str, str]:
    return {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() for name in names}


def test_ctrl_c_during_dvc_repro_leaves_no_partial_output_and_the_next_repro_gives_the_same_metrics(
    reproduced_repo, own_reproduced_repo
):
    """Ctrl-C (SIGINT to dvc and its stage) in the middle of training; then the next `dvc repro` completes with the
    same results.
    """
    repo = own_reproduced_repo
    (repo / "src" / "sitecustomize.py").write_text(TRAINING_STARTED_HOOK)  # stage commands run with PYTHONPATH=src
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  epochs: 100\n", "  epochs: 3000000\n"))
    started = repo / "started"
    process = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro"],
        cwd=repo,
        env=child_env(GDPIPE_TEST_TRAINING_STARTED=str(started)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(started.exists, process, what="training started")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0
    assert (
        stderr.count("gdpipe: interrupted (SIGINT); no output was half-written\n") == 1
        and "Traceback" not in stdout + stderr
    ), stderr
    assert not (
        repo / "history" / "numpy.csv"
    ).exists()  # DVC removed the stage's outputs before running it; none is half-written
    assert not [path for path in repo.rglob("*.tmp") if ".dvc" not in path.parts]
    (repo / "params.yaml").write_text(params)
    (repo / "src" / "sitecustomize.py").unlink()
    dvc(repo, "repro")  # DVC restores train@numpy from its run cache: that result was complete
    assert hashes(repo) == hashes(reproduced_repo)
    assert (repo / "dvc.lock").read_text() == (reproduced_repo / "dvc.lock").read_text()


def test_same_params_give_byte_identical_outputs_on_a_forced_rerun(reproduced_repo, own_reproduced_repo):
    """`dvc repro -f` reruns every stage, in another folder: data, histories, models, metrics, plot and fingerprints are
    the same bytes; only the training times (kept beside the histories for MLflow, out of DVC and git) differ."""
    repo = own_reproduced_repo
    times = [f"history/{variant}.timing.json" for variant in ("numpy", "torch")]
    first_times = hashes(repo, times)
    done = dvc(repo, "repro", "--force")
    assert stages_run(done.stdout) == {"generate", "train@numpy", "train@torch", "evaluate", "track"}
    assert hashes(repo) == hashes(reproduced_repo)
    assert hashes(repo, times) != first_times  # the times did change: they are not part of any hashed output


# --- params.yaml edited while the pipeline runs --------------------------------------------------

# A test hook, installed as sitecustomize (stage commands run with PYTHONPATH=src), in the numpy training only.
# GDPIPE_TEST_PAUSE=<folder>: once training has started, touch <folder>/started and wait for <folder>/resume, so
# the test edits params.yaml while the stage certainly runs. GDPIPE_TEST_EDIT_AT_EXIT=<old>|<new>: replace that text
# of params.yaml as the process exits, after the stage's last check and before DVC reads the file for dvc.lock.
PARAMS_EDIT_HOOK = """
import atexit
import os
import sys
import time
from pathlib import Path

if sys.argv[0].endswith("train.py") and "numpy" in sys.argv:
    if os.environ.get("GDPIPE_TEST_PAUSE"):
        import gdpipe.train

        _train = gdpipe.train.train

        def _paused_train(*args, **kwargs):
            folder = Path(os.environ["GDPIPE_TEST_PAUSE"])
            (folder / "started").touch()
            while not (folder / "resume").exists():
                time.sleep(0.02)
            return _train(*args, **kwargs)

        gdpipe.train.train = _paused_train
    if os.environ.get("GDPIPE_TEST_EDIT_AT_EXIT"):
        def _edit():
            path = Path("params.yaml")
            path.write_text(path.read_text().replace(*os.environ["GDPIPE_TEST_EDIT_AT_EXIT"].split("|")))

        atexit.register(_edit)
"""


def _assert_published_as_trained(repo: Path, lr: float, other_lr: float) -> None:
    """Both MLflow runs of the current result say train.lr = `lr`, and their w is the one training with `lr` gives
    (computed here, in this process), which training with `other_lr` does not."""
    from mlflow import MlflowClient

    from gdpipe.core import config
    from gdpipe.core.artifacts import Dataset
    from gdpipe.train import train

    params = config.load(repo / "params.yaml")
    assert params.train.lr == lr
    dataset = Dataset.load(repo / "data" / "dataset.npy")
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    runs = {run["run_id"]: variant for variant, run in json.loads((repo / "runs.json").read_text()).items()}
    for run_id, variant in runs.items():
        w = train(variant, dataset, params.train).w[-1]
        other = params.train.model_copy(update={"lr": other_lr})
        assert train(variant, dataset, other).w[-1] != w  # the test can tell the two trainings apart
        run = client.get_run(run_id)
        assert run.data.params["train.lr"] == str(lr) and run.data.tags["variant"] == variant
        assert max(client.get_metric_history(run_id, "w"), key=lambda point: point.step).value == w
        model = json.loads((repo / "models" / f"{variant}.json").read_text())
        assert model["w"] == w and model["trained_with"]["train.lr"] == lr
    assert sorted(runs.values()) == ["numpy", "torch"]
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."


def test_params_edited_while_training_stop_dvc_repro_and_the_next_repro_trains_with_the_new_ones(
    own_reproduced_repo, tmp_path, reaper
):
    """A `git pull` or an editor's save while train@numpy runs: that stage fails in one line, DVC records nothing
    for it, nothing is published under either lr; the next `dvc repro` trains with the new lr and publishes it."""
    repo = own_reproduced_repo
    (repo / "src" / "sitecustomize.py").write_text(PARAMS_EDIT_HOOK)
    _set_param(repo, "train", "lr", 0.001)
    process = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro"],
        cwd=repo,
        env=child_env(GDPIPE_TEST_PAUSE=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper(process)
    wait_for((tmp_path / "started").exists, process, what="the numpy training started")
    _set_param(repo, "train", "lr", 0.002)
    (tmp_path / "resume").touch()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "Traceback" not in stdout + stderr
    line = (
        "gdpipe: error: params.yaml changed while this stage ran (train.lr 0.001 -> 0.002): its outputs were made "
        "with the old values, so DVC records nothing for it; run make repro again\n"
    )
    assert stderr.count(line) == 1, stderr
    assert "track" not in stages_run(stdout) and runs_in_store(repo / "mlruns" / "mlflow.db") == []
    (repo / "src" / "sitecustomize.py").unlink()
    done = dvc(repo, "repro")
    assert {"train@numpy", "train@torch", "evaluate", "track"} <= stages_run(done.stdout)
    _assert_published_as_trained(repo, 0.002, other_lr=0.001)


def test_params_edited_as_a_training_ends_are_never_published_with_its_model(own_reproduced_repo):
    """The edit lands after train@numpy's last check, before DVC reads params.yaml: dvc.lock and DVC's run cache
    then hold lr 0.002 beside a model trained with 0.001, and a plain `dvc repro` restores that model. The model
    records its own params: track refuses it, every time, in one line that says how to train it again."""
    repo = own_reproduced_repo
    (repo / "src" / "sitecustomize.py").write_text(PARAMS_EDIT_HOOK)
    _set_param(repo, "train", "lr", 0.001)
    assert "  lr: 0.001 " in (repo / "params.yaml").read_text()
    done = dvc(repo, "repro", check=False, env=child_env(GDPIPE_TEST_EDIT_AT_EXIT="  lr: 0.001 |  lr: 0.002 "))
    (repo / "src" / "sitecustomize.py").unlink()
    line = (
        "gdpipe: error: models/numpy.json was trained with other params than params.yaml gives (train.lr 0.001 -> "
        "0.002): params.yaml changed as the train@numpy stage ended, after its last check; nothing was published: "
        "train it again with '.venv/bin/dvc repro --force --single-item train@numpy', then run make repro\n"
    )
    assert done.returncode != 0 and done.stderr.count(line) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "track" in stages_run(done.stdout) and runs_in_store(repo / "mlruns" / "mlflow.db") == []
    # DVC restores the model it recorded under lr 0.002 (removing it changes nothing); track refuses it again.
    (repo / "history" / "numpy.csv").unlink()
    (repo / "models" / "numpy.json").unlink()
    again = dvc(repo, "repro", check=False)
    assert "train@numpy" not in stages_run(again.stdout) and again.stderr.count(line) == 1, again.stdout
    assert runs_in_store(repo / "mlruns" / "mlflow.db") == []
    # What the line says to do trains it again; then the result is published with the lr it was trained with.
    assert stages_run(dvc(repo, "repro", "--force", "--single-item", "train@numpy").stdout) == {"train@numpy"}
    dvc(repo, "repro")
    _assert_published_as_trained(repo, 0.002, other_lr=0.001)


def test_params_edited_after_an_earlier_stage_ran_are_never_published_with_its_outputs(
    own_reproduced_repo, tmp_path, reaper
):
    """data.true_w edited while train@numpy runs: the training does not read it, evaluate and track read the new value,
    but the data set was generated with the old one. track compares what dvc.lock recorded for each earlier stage,
    publishes nothing, and the next `dvc repro` generates the data again and publishes it with its own params."""
    from mlflow import MlflowClient

    from gdpipe.core import config
    from gdpipe.core.files import file_sha256
    from gdpipe.data import generate

    repo = own_reproduced_repo
    (repo / "src" / "sitecustomize.py").write_text(PARAMS_EDIT_HOOK)
    _set_param(repo, "train", "lr", 0.001)  # so that train@numpy runs
    process = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro"],
        cwd=repo,
        env=child_env(GDPIPE_TEST_PAUSE=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper(process)
    wait_for((tmp_path / "started").exists, process, what="the numpy training started")
    _set_param(repo, "data", "true_w", 3.0)
    (tmp_path / "resume").touch()
    stdout, stderr = process.communicate(timeout=300)
    line = (
        "gdpipe: error: params.yaml changed after the generate stage ran (data.true_w 2.0 -> 3.0): its outputs are not "
        "of these params, so nothing was published; run make repro again\n"
    )
    assert process.returncode != 0 and stderr.count(line) == 1 and "Traceback" not in stderr, stderr
    assert "track" in stages_run(stdout) and runs_in_store(repo / "mlruns" / "mlflow.db") == []
    (repo / "src" / "sitecustomize.py").unlink()
    assert "generate" in stages_run(dvc(repo, "repro").stdout)
    params = config.load(repo / "params.yaml")
    dataset = repo / "data" / "dataset.npy"
    generate(params.data).save(tmp_path / "expected.npy")
    assert (tmp_path / "expected.npy").read_bytes() == dataset.read_bytes()
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    for run in json.loads((repo / "runs.json").read_text()).values():
        published = client.get_run(run["run_id"]).data
        assert published.params["data.true_w"] == "3.0" and published.tags["data.sha256"] == file_sha256(dataset)
