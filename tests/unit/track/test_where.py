"""The store a user names is the store that holds the result: `make repro` publishes the current result
to MLFLOW_TRACKING_URI's store even when DVC had every stage cached, once, and its last line names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gdpipe.core.command import InputError
from gdpipe.track import where
from support import VARIANTS, child_env, make, runs_in_store, stages_run

UI = "http://127.0.0.1:5000"
VIEW = "#/experiments/7?workflowType=machine_learning"


def write_result(folder: Path, store: str, fingerprints: dict[str, str] | None = None) -> tuple[Path, Path]:
    """runs.json and published.json as track writes them, for one result published to `store`."""
    fingerprints = fingerprints or {variant: f"{variant}-fingerprint" for variant in VARIANTS}
    published = {
        variant: {"fingerprint": value, "experiment": "gradient-descent"} for variant, value in fingerprints.items()
    }
    runs = {
        variant: {"run_id": f"{variant}-run", "experiment_id": "7", "tracking_uri": store, "fingerprint": value}
        | {"model_version": "1"}
        for variant, value in fingerprints.items()
    }
    (folder / "published.json").write_text(json.dumps(published))
    (folder / "runs.json").write_text(json.dumps(runs))
    return folder / "runs.json", folder / "published.json"


def test_runs_json_is_current_only_for_this_result_in_this_store(tmp_path):
    server = "https://mlflow.team.example"
    runs, published = write_result(tmp_path, server)
    assert where.not_current(runs, published, server) is None
    # The same server with credentials in the URI is the same store; runs.json never held them.
    assert where.not_current(runs, published, "https://alice:s3cret@mlflow.team.example") is None
    assert where.not_current(runs, published, "sqlite:////tmp/other.db") == (
        f"{runs}: the runs are in {server}, not in sqlite:////tmp/other.db"
    )
    write_result(tmp_path, server, {"numpy": "numpy-fingerprint", "torch": "another result"})
    (tmp_path / "published.json").write_text(json.dumps({v: {"fingerprint": f"{v}-fingerprint"} for v in VARIANTS}))
    assert where.not_current(runs, published, server) == f"{runs} is not of the current result ({published})"
    runs.write_text('{"numpy": {"run_id": "x"}}')
    assert where.not_current(runs, published, server) == f"{runs}: not written by this version of the track stage"
    runs.unlink()
    assert where.not_current(runs, published, server) == f"{runs} is missing"


def test_the_last_line_names_the_store_without_its_password_and_how_to_see_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    default = where.default_uri(tmp_path.resolve())
    other = "sqlite:////data/my runs/mlflow.db"
    lines = {
        "": f"Both runs are in MLflow at {default}: make ui, then open {UI}/{VIEW}",
        other: f"Both runs are in MLflow at {other}: make ui STORE='{other}', then open {UI}/{VIEW}",
        "https://alice:s3cret@mlflow.team.example/": (
            f"Both runs are in MLflow at https://mlflow.team.example/: open https://mlflow.team.example/{VIEW}"
        ),
    }
    for named, line in lines.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", named)  # empty: not set
        uri = where.tracking_uri(where.repo_root())
        runs, published = write_result(tmp_path, where.redact(uri))
        assert where.show(runs, published, uri, UI) == line
    with pytest.raises(InputError, match=r"/runs.json: the runs are in https://mlflow.team.example/, not in sqlite:"):
        where.show(runs, published, other, UI)


def test_make_repro_publishes_a_cached_result_to_a_newly_named_store_once(own_reproduced_repo, tmp_path, empty_store):
    """DVC has every stage up to date; a user names another sqlite store. Only track reruns (nothing is
    trained again, dvc.lock stays as it is), the runs land there, and the last line says so. The next
    make repro, with nothing new, neither reruns track nor publishes again."""
    repo = own_reproduced_repo
    kept = ["history/numpy.csv", "history/torch.csv", "models/numpy.json", "models/torch.json"]
    before = {name: ((repo / name).read_bytes(), (repo / name).stat().st_mtime_ns) for name in kept}
    lock = (repo / "dvc.lock").read_bytes()  # DVC writes it again after track, byte for byte the same
    elsewhere = empty_store(tmp_path / "elsewhere" / "mlflow.db")
    env = child_env(MLFLOW_TRACKING_URI=elsewhere)
    old = json.loads((repo / "runs.json").read_text())["numpy"]["tracking_uri"]  # the store of the copied repo

    done = make(repo, "repro", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stages_run(done.stdout) == {"track"}
    reason = f"runs.json: the runs are in {old}, not in {elsewhere}"
    assert f"{reason}: publishing the current result there (dvc repro --single-item --force track)\n" in done.stdout
    assert done.stdout.count(": new run ") == 2
    last = f"Both runs are in MLflow at {elsewhere}: make ui STORE={elsewhere}, then open {UI}/#/experiments/1?"
    assert done.stdout.endswith(f"{last}workflowType=machine_learning\n")
    assert {name: ((repo / name).read_bytes(), (repo / name).stat().st_mtime_ns) for name in kept} == before
    assert (repo / "dvc.lock").read_bytes() == lock

    client = MlflowClient(elsewhere)
    runs = client.search_runs([client.get_experiment_by_name("gradient-descent").experiment_id])
    published = json.loads((repo / "published.json").read_text())
    recorded = json.loads((repo / "runs.json").read_text())
    metrics = json.loads((repo / "metrics.json").read_text())
    assert sorted(run.data.tags["variant"] for run in runs) == sorted(VARIANTS)
    for run in runs:
        variant = run.data.tags["variant"]
        assert run.info.status == "FINISHED" and run.info.run_id == recorded[variant]["run_id"]
        assert run.data.tags["gdpipe.fingerprint"] == published[variant]["fingerprint"]
        assert run.data.metrics["prediction"] == metrics[variant]["prediction"] == pytest.approx(10.0, abs=1e-5)
        assert run.data.metrics["w"] == metrics[variant]["w"]
        assert recorded[variant]["tracking_uri"] == elsewhere
    assert runs_in_store(repo / "mlruns" / "mlflow.db") == []  # the copy's own store got nothing

    state = (repo / "runs.json").stat().st_mtime_ns
    again = make(repo, "repro", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stages_run(again.stdout) == set() and "publishing" not in again.stdout
    assert again.stdout.endswith(f"{last}workflowType=machine_learning\n")
    assert (repo / "runs.json").stat().st_mtime_ns == state
    assert len(client.search_runs([runs[0].info.experiment_id])) == 2
    assert (repo / "dvc.lock").read_bytes() == lock
