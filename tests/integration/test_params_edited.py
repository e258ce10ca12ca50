"""params.yaml edited while the pipeline runs, with the real `dvc repro`: edited while a training runs, as it
ends, or after an earlier stage ran, nothing is published with outputs of other params, and the next repro
publishes the result with its own. Each stage's own check, in this process: tests/unit/stages/test_failures.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import VENV_BIN, child_env, dvc, runs_in_store, set_param, sitecustomize, stages_run, wait_for


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
    sitecustomize(repo / "src", "params_edit")  # stage commands run with PYTHONPATH=src
    set_param(repo, "train", "lr", 0.001)
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
    set_param(repo, "train", "lr", 0.002)
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
    sitecustomize(repo / "src", "params_edit")  # stage commands run with PYTHONPATH=src
    set_param(repo, "train", "lr", 0.001)
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
    sitecustomize(repo / "src", "params_edit")  # stage commands run with PYTHONPATH=src
    set_param(repo, "train", "lr", 0.001)  # so that train@numpy runs
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
    set_param(repo, "data", "true_w", 3.0)
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
