"""Team mode for real: `make server`'s MLflow server on PostgreSQL, with basic auth, and many publishers at once.

One server for this file, started and stopped by make as a user would (`make test` runs a file's tests on one
worker). Each test publishes into an experiment and registered models of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput
from ruamel.yaml import YAML

from gdpipe.track.store import EXPERIMENT_KIND, retried_if_raced
from promotions import assert_one_champion_per_round, make_results
from support import (
    REPO,
    VARIANTS,
    assert_one_error_line,
    build_workspace,
    child_env,
    files_under,
    make,
    run_track,
    src_env,
    stages_run,
    start_track,
    wait_for,
    with_overrides,
    write_yaml,
)
from team import ADMIN, CREDENTIALS, PASSWORD

LONG_EPOCHS = 1000  # publishing a run's history then takes long enough (about a second) to be cut short


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    """A finished workspace (generate, train, evaluate): the result that publishers publish."""
    return build_workspace(tmp_path_factory.mktemp("team") / "ws")


def publishers(workspace: Path, root: Path, count: int, experiment: str) -> list[Path]:
    """`count` copies of a workspace, as clones on different machines, publishing to `experiment`."""
    folders = []
    for index in range(count):
        folder = Path(shutil.copytree(workspace, root / f"publisher-{index}"))
        document = YAML(typ="safe").load((folder / "params.yaml").read_text())
        write_yaml(folder / "params.yaml", with_overrides(document, {"track.experiment": experiment}))
        folders.append(folder)
    return folders


def publish_at_once(folders: list[Path], env: dict[str, str]) -> list[tuple[int, str, str]]:
    """The track stage in every folder, all started at once, each a process of its own: (exit code, stdout,
    stderr) of each."""
    processes = [start_track(folder, env) for folder in folders]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:  # one that hangs: none is left running
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return [(process.returncode, *output) for process, output in zip(processes, outputs, strict=True)]


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def test_eight_publishers_of_one_result_make_one_run_per_variant(team_server, result, tmp_path, monkeypatch):
    """At the same moment on a fresh experiment (its creation races too): all succeed, one run and one
    model version per variant, and every publisher's runs.json names them."""
    folders = publishers(result, tmp_path, 8, "one-result")
    finished = publish_at_once(folders, team_server.env())
    assert [code for code, _, _ in finished] == [0] * 8, [err for _, _, err in finished]
    client = team_server.client(monkeypatch)
    runs = runs_of(client, "one-result")
    assert sorted((run.data.tags["variant"], run.info.status) for run in runs) == [
        ("numpy", "FINISHED"),
        ("torch", "FINISHED"),
    ]
    by_variant = {run.data.tags["variant"]: run.info.run_id for run in runs}
    for folder in folders:
        named = json.loads((folder / "runs.json").read_text())
        assert {variant: entry["run_id"] for variant, entry in named.items()} == by_variant
    assert sum(out.count(": new run ") for _, out, _ in finished) == 2  # the others found them
    for variant in VARIANTS:
        versions = client.search_model_versions(f"name = 'gdpipe-{variant}' and run_id = '{by_variant[variant]}'")
        assert len(versions) == 1
        assert "gdpipe.heartbeat" not in client.get_run(by_variant[variant]).data.tags  # a live run's only


def test_eight_publishers_of_different_results_make_eight_runs_per_variant(team_server, tmp_path, monkeypatch):
    folders = []
    for index in range(8):
        result = build_workspace(tmp_path / f"result-{index}", {"train.epochs": 20 + index})
        folders += publishers(result, tmp_path / f"clone-{index}", 1, "many-results")
    finished = publish_at_once(folders, team_server.env())
    assert [code for code, _, _ in finished] == [0] * 8, [err for _, _, err in finished]
    runs = runs_of(team_server.client(monkeypatch), "many-results")
    assert len(runs) == 16 and {run.info.status for run in runs} == {"FINISHED"}
    epochs = sorted((run.data.tags["variant"], run.data.params["train.epochs"]) for run in runs)
    assert epochs == sorted((variant, str(20 + index)) for variant in VARIANTS for index in range(8))
    named = {json.loads((folder / "runs.json").read_text())["numpy"]["run_id"] for folder in folders}
    assert len(named) == 8  # each its own
    # One data set for all: each run lists it, though they logged it at once (retried_if_raced).
    assert {tuple(each.dataset.name for each in run.inputs.dataset_inputs) for run in runs} == {("dataset",)}


def test_publishers_that_race_to_insert_one_dataset_or_one_alias_all_succeed(team_server, monkeypatch):
    """MLflow's SQL store looks up, then inserts, an experiment's dataset and a model's alias: on
    PostgreSQL some of eight at once failed on the unique key in nearly every round, until
    retried_if_raced made them again."""
    client = team_server.client(monkeypatch)
    experiment_id = client.create_experiment(f"race-{uuid.uuid4().hex}")
    model = client.create_registered_model(f"race-{uuid.uuid4().hex}").name
    for _ in range(3):  # rounds, each with a dataset and an alias that do not exist yet
        race_to_insert(client, experiment_id, model, count=8)


def race_to_insert(client: MlflowClient, experiment_id: str, model: str, count: int) -> None:
    """`count` threads at once log one new dataset, each into its own run, then point one new alias at theirs."""
    runs = [client.create_run(experiment_id).info.run_id for _ in range(count)]
    versions = [client.create_model_version(model, f"runs:/{run}/model", run_id=run).version for run in runs]
    dataset = DatasetInput(Dataset("dataset", uuid.uuid4().hex[:16], "code", "{}"))
    alias = f"a{uuid.uuid4().hex}"
    start = threading.Barrier(count)

    def publisher(index: int) -> None:
        start.wait()
        retried_if_raced(client.log_inputs, runs[index], [dataset])
        retried_if_raced(client.set_registered_model_alias, model, alias, versions[index])

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(publisher, range(count)))  # list(): raises what a publisher raised
    for run in runs:
        logged = client.get_run(run).inputs.dataset_inputs
        assert [each.dataset.digest for each in logged] == [dataset.dataset.digest]
    assert client.get_model_version_by_alias(model, alias).version in versions


@pytest.mark.parametrize("together", [True, False], ids=["first-writes-together", "started-at-once"])
def test_promotions_at_once_on_the_server_leave_one_result_champion(team_server, monkeypatch, together):
    """As on sqlite (test_registry.py), through the server's REST API on PostgreSQL."""
    client = team_server.client(monkeypatch)
    results = make_results(client, f"race-{uuid.uuid4().hex}", 3)
    assert_one_champion_per_round(client, results, rounds=10, promoters=2 if together else 3, together=together)


def kill_while_publishing(process: subprocess.Popen, client: MlflowClient, experiment: str, kill) -> str:
    """Wait until the publisher's first run is RUNNING on the server, then `kill()`; that run's id."""
    wait_for(lambda: any(run.info.status == "RUNNING" for run in runs_of(client, experiment)), process, 120, "a run")
    (running,) = [run.info.run_id for run in runs_of(client, experiment) if run.info.status == "RUNNING"]
    kill()
    process.communicate(timeout=60)
    return running


def assert_healed(team_server, folder: Path, client: MlflowClient, experiment: str, abandoned: str) -> None:
    """The next publish (which takes a run without progress for 2 s for abandoned) marks it KILLED and
    completes the result: one FINISHED run per variant, none RUNNING."""
    done = run_track(folder, team_server.env(GDPIPE_ABANDONED_AFTER="2"))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert f"run {abandoned} was left RUNNING by a publisher that was killed; marked KILLED" in done.stdout
    runs = runs_of(client, experiment)
    statuses = sorted((run.data.tags["variant"], run.info.status) for run in runs if run.info.run_id != abandoned)
    assert statuses == [("numpy", "FINISHED"), ("torch", "FINISHED")]
    assert client.get_run(abandoned).info.status == "KILLED"


def test_a_publisher_killed_with_sigkill_is_healed_by_the_next_publish(team_server, tmp_path, monkeypatch):
    (folder,) = publishers(build_workspace(tmp_path / "long", {"train.epochs": LONG_EPOCHS}), tmp_path, 1, "sigkill")
    client = team_server.client(monkeypatch)
    process = start_track(folder, team_server.env())
    abandoned = kill_while_publishing(process, client, "sigkill", process.kill)
    assert process.returncode == -signal.SIGKILL
    assert_healed(team_server, folder, client, "sigkill", abandoned)


def test_a_server_killed_mid_publish_and_restarted_is_healed_by_the_next_publish(team_server, tmp_path, monkeypatch):
    """The publisher says in one line that the server went away; `make server` starts it again on the same
    data (the earlier runs are there), and the next publish heals the run left RUNNING."""
    (folder,) = publishers(build_workspace(tmp_path / "long", {"train.epochs": LONG_EPOCHS + 1}), tmp_path, 1, "crash")
    client = team_server.client(monkeypatch)
    before = len(runs_of(client, "one-result"))
    process = start_track(folder, team_server.env())
    group = int((team_server.folder / "mlflow.pid").read_text().split()[0])
    abandoned = kill_while_publishing(process, client, "crash", lambda: os.killpg(group, signal.SIGKILL))
    _, stderr = process.communicate()
    assert process.returncode == 2
    assert_one_error_line(stderr, f"MLflow tracking store {team_server.url} ", "stays RUNNING")
    restarted = make(REPO, "server", *team_server.settings, env=child_env(**CREDENTIALS))
    team_server.outputs += [restarted.stdout, restarted.stderr]
    assert restarted.returncode == 0 and "MLflow server on PostgreSQL at" in restarted.stdout, restarted.stderr
    assert len(runs_of(client, "one-result")) == before
    assert_healed(team_server, folder, client, "crash", abandoned)


def test_wrong_credentials_and_missing_permission_are_one_line(team_server, result, tmp_path, monkeypatch):
    """401 for a wrong password or none, 403 for a user who may only read: exit 2, one line saying what to do."""
    (folder,) = publishers(result, tmp_path, 1, "permissions")
    team_server.client(monkeypatch).create_experiment("permissions", tags=EXPERIMENT_KIND)  # the admin's
    reader_password = uuid.uuid4().hex
    created = requests.post(  # MLflow's REST API for users (its Python client imports a deprecated module)
        f"{team_server.url}/api/2.0/mlflow/users/create",
        json={"username": "reader", "password": reader_password},
        auth=(ADMIN, PASSWORD),
        timeout=30,
    )
    assert created.status_code == 200, created.text
    cases = {
        "wrong password": (team_server.env(MLFLOW_TRACKING_PASSWORD="not-the-password"), "refused the credentials"),
        "none": (src_env(MLFLOW_TRACKING_URI=team_server.url), "asks for credentials (401 Unauthorized): export"),
        "reader": (
            team_server.env(MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD=reader_password),
            "denied this user permission (403 Forbidden)",
        ),
    }
    for name, (env, expected) in cases.items():
        (folder / "runs.json").unlink(missing_ok=True)
        done = run_track(folder, env)
        assert done.returncode == 2, (name, done.stderr)
        assert_one_error_line(done.stderr, f"MLflow tracking store {team_server.url} {expected}")
        assert not (folder / "runs.json").exists()


def test_the_password_appears_nowhere(team_server, result, tmp_path):
    """Not in what make server or the publishers print, in no file of the workspace or the server's folder
    (logs, artifacts, the database's files), and not in a dump of its databases (runs, params, tags, users)."""
    import psycopg2

    (folder,) = publishers(result, tmp_path, 1, "secrets")
    uri_with_password = team_server.url.replace("://", f"://{ADMIN}:{PASSWORD}@")
    printed = run_track(folder, team_server.env(MLFLOW_TRACKING_URI=uri_with_password))
    assert printed.returncode == 0, printed.stderr
    outputs = [*team_server.outputs, printed.stdout, printed.stderr]
    texts = {f"output {index}": text for index, text in enumerate(outputs)}
    texts |= {str(path): path.read_bytes().decode("latin-1") for path in files_under(folder)}
    texts |= {str(path): path.read_bytes().decode("latin-1") for path in files_under(team_server.folder)}
    cluster = team_server.folder / "postgres"
    for database in ("mlflow", "mlflow_auth"):
        with psycopg2.connect(host=str(cluster), port=5432, user="postgres", dbname=database) as connection:
            cursor = connection.cursor()
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            for (table,) in cursor.fetchall():
                cursor.execute(f'SELECT * FROM "{table}"')
                texts[f"{database}.{table}"] = repr(cursor.fetchall())
        connection.close()
    assert "mlflow.runs" in texts and "mlflow_auth.users" in texts and len(texts) > 100
    assert not [name for name, text in texts.items() if PASSWORD in text]
    with psycopg2.connect(host=str(cluster), port=5432, user="postgres", dbname="mlflow") as connection:
        cursor = connection.cursor()
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == ("",)  # the database is on its socket only, never on the network
    connection.close()


def test_make_repro_publishes_a_cached_result_to_the_server_a_user_names(team_server, own_reproduced_repo, monkeypatch):
    """The user's report: after a local make repro, `export MLFLOW_TRACKING_URI=<server>` and make repro again.
    DVC has every stage cached, yet the result goes to the server, its last line names the server (without the
    password in the URI, which runs.json does not hold either), and a second make repro publishes nothing."""
    repo = own_reproduced_repo
    uri_with_password = team_server.url.replace("://", f"://{ADMIN}:{PASSWORD}@")
    env = child_env(MLFLOW_TRACKING_URI=uri_with_password)
    done = make(repo, "repro", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stages_run(done.stdout) == {"track"} and done.stdout.count(": new run ") == 2
    client = team_server.client(monkeypatch)
    experiment = client.get_experiment_by_name("gradient-descent").experiment_id
    view = f"{team_server.url}/#/experiments/{experiment}?workflowType=machine_learning"
    assert done.stdout.endswith(f"Both runs are in MLflow at {team_server.url}: open {view}\n")
    published = json.loads((repo / "published.json").read_text())
    runs = client.search_runs([experiment])
    assert {run.data.tags["variant"]: run.data.tags["gdpipe.fingerprint"] for run in runs} == {
        variant: published[variant]["fingerprint"] for variant in VARIANTS
    }
    assert PASSWORD not in done.stdout + done.stderr + (repo / "runs.json").read_text()
    again = make(repo, "repro", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stages_run(again.stdout) == set() and again.stdout.endswith(f"{view}\n")
    assert len(client.search_runs([experiment])) == 2
