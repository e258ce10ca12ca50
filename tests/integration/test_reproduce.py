"""make reproduce: a registered model rebuilt from its lineage in a temporary worktree, from nothing, and compared
bit for bit; each difference named, bad input in one line, the user's workspace untouched, nothing left behind.

One promoted copy of the project serves the module (`reproducible_repo`); tests that change it work on a copy,
or put back what they changed. Each rebuild runs the whole pipeline (about 20 s here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ruamel.yaml import YAML

from gdpipe.core.command import run_main
from gdpipe.track import environment, reproduce
from remotes import git, workspace_bytes
from support import (
    VENV_BIN,
    assert_one_error_line,
    child_env,
    files_under,
    free_port,
    make,
    src_env,
    wait_for,
    wait_for_server,
)

GIT = ["-c", "user.name=gdpipe tests", "-c", "user.email=tests@gdpipe.invalid"]
LESSON_W, LESSON_F5 = "1.9999996423721313", "9.999998211860657"  # the lesson's float32 w, and f(5) with it


def store(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def model_folder(client: MlflowClient, name: str, version: str) -> str:
    """The artifact folder of a registered version's logged model (its source is models:/<model id>)."""
    source = client.get_model_version(name, version).source
    return client.get_logged_model(source.removeprefix("models:/")).artifact_location


def committed_outputs(repo: Path, commit: str) -> dict[str, str]:
    """Each output's md5 in the dvc.lock of `commit`."""
    lock = YAML(typ="safe").load(git(repo, "show", f"{commit}:dvc.lock"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", ())}


def reproduce_in(repo: Path, model: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """make reproduce MODEL=`model` in `repo`, with its temporary files in `tmp` (which must stay empty)."""
    tmp.mkdir(exist_ok=True)
    return make(repo, "reproduce", env=child_env(MODEL=model, TMPDIR=str(tmp), **env), timeout=600)


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows, read by its header's columns: what -> [recorded, rebuilt, same or DIFFERS]."""
    lines = stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.lstrip().startswith("recorded"))
    recorded, rebuilt = lines[header].index("recorded"), lines[header].index("rebuilt")
    found = {}
    for line in lines[header + 1 :]:
        if not line:
            break
        found[line[:recorded].strip()] = [line[recorded:rebuilt].strip(), *line[rebuilt:].rsplit(maxsplit=1)]
    return found


def state(repo: Path) -> dict:
    """What make reproduce must leave as it found: every file of the workspace (the MLflow store too), DVC's
    folder (its cache, config and temporary files), git's view of the workspace, its worktrees and refs."""
    return {
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in workspace_bytes(repo).items()},
        "dvc": {str(path.relative_to(repo)): path.read_bytes() for path in files_under(repo / ".dvc")},
        "status": git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "refs": git(repo, "show-ref", "--head"),
    }


@pytest.fixture(scope="module")
def reproducible_repo(reproduced_repo, tmp_path_factory, empty_store) -> Path:
    """A copy of the project after `make promote`: version 1 of both models is champion, with its lineage."""
    repo = tmp_path_factory.mktemp("reproducible") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")
    (repo / "mlruns" / ".gitkeep").touch()  # committed: without it the runs would say the sources were dirty
    (repo / "published.json").unlink()  # as in a fresh clone: track publishes to this store
    done = make(repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    return repo


def test_the_champion_rebuilds_identical_from_its_own_commit_after_params_and_code_moved_on_and_nothing_changes(
    reproducible_repo, tmp_path
):
    repo = Path(shutil.copytree(reproducible_repo, tmp_path / "repo", symlinks=True))
    first = git(repo, "rev-parse", "HEAD").strip()
    # Params and code move on, in a new commit.
    params = (repo / "params.yaml").read_text()
    assert params.count("  lr: 0.01 ") == 1
    (repo / "params.yaml").write_text(params.replace("  lr: 0.01 ", "  lr: 0.02 "))
    with (repo / "src" / "gdpipe" / "train" / "loop.py").open("a") as code:
        code.write("# a later commit's code\n")
    git(repo, *GIT, "commit", "-qam", "moved on")

    before = state(repo)
    done = reproduce_in(repo, "gdpipe-torch@champion", tmp_path / "tmp")
    assert done.returncode == 0, done.stdout + done.stderr
    assert state(repo) == before  # the workspace, its store, DVC's cache and config, git: as they were
    assert list((tmp_path / "tmp").iterdir()) == []  # the worktree, the cache, the throwaway store: gone

    champion = store(repo).get_model_version("gdpipe-torch", "1")
    lines = done.stdout.splitlines()
    assert f"gdpipe-torch version 1 (champion): run {champion.run_id}, torch, commit {first[:12]}" in lines
    table = rows(done.stdout)
    for path, md5 in committed_outputs(repo, first).items():  # the first commit's, not the moved-on one's
        assert table.pop(path) == [md5[:12], md5[:12], "same"]
    assert table.pop("model w") == [LESSON_W, LESSON_W, "same"]
    assert table.pop("model f(5)") == [LESSON_F5, LESSON_F5, "same"]
    assert table.pop("model file sha256")[2] == table.pop("fingerprint")[2] == "same"
    # w and loss at epochs 1 to 100, and 6 final values; training_seconds, a wall-clock time, is not compared.
    assert table.pop("metrics (8 of 8)") == ["206 values", "206 values", "same"]
    assert table == {}
    assert lines[-1] == "reproduced: gdpipe-torch version 1 is identical (8 outputs, model, 8 metrics)"
    # The run recorded the software it was made with: this very environment, so no line says otherwise.
    tags = store(repo).get_run(champion.run_id).data.tags
    assert environment.recorded(tags) == environment.environment()
    assert not any(line.startswith("environment:") for line in lines)


def test_a_result_published_from_an_uncommitted_change_is_not_reproduced_and_each_difference_is_named(
    reproducible_repo, tmp_path
):
    repo = Path(shutil.copytree(reproducible_repo, tmp_path / "repo", symlinks=True))
    data = repo / "src" / "gdpipe" / "data.py"
    code = data.read_text()
    assert code.count("y = x * np.float32(params.true_w)") == 1
    data.write_text(code.replace("y = x * np.float32(params.true_w)", "y = x * np.float32(params.true_w + 1)"))
    published = make(repo, "repro")  # y = 3x, never committed: the result's run says git.dirty
    assert published.returncode == 0, published.stdout + published.stderr
    run = store(repo).get_run(store(repo).get_model_version("gdpipe-numpy", "2").run_id)
    assert run.data.tags["git.dirty"] == "true"
    w = repr(run.data.metrics["w"])
    assert w.startswith("2.99999")

    done = reproduce_in(repo, "gdpipe-numpy/2", tmp_path / "tmp")
    assert done.stderr.endswith("reproduce] Error 1\n"), done.stdout + done.stderr  # its exit 1; make's is 2
    assert list((tmp_path / "tmp").iterdir()) == []
    table = rows(done.stdout)
    commit = git(repo, "rev-parse", "HEAD").strip()
    for path, md5 in committed_outputs(repo, commit).items():  # the commit's own result, rebuilt
        assert table[path] == [md5[:12], md5[:12], "same"]
    assert table["model w"] == [w, LESSON_W, "DIFFERS"]  # the registered model is not what the commit gives
    assert table["fingerprint"][2] == "DIFFERS" and table["metric w, step 1"][2] == "DIFFERS"
    verdict = done.stdout[done.stdout.index("not reproduced: ") :].splitlines()
    assert verdict[0].startswith("not reproduced: gdpipe-numpy version 2 differs from its rebuild in ")
    assert f"  model w: {w} recorded, {LESSON_W} rebuilt" in verdict
    assert verdict[-2:] == [
        f"  its run was published from a workspace with uncommitted changes (git.dirty): commit {commit[:12]} "
        "does not hold everything that made it",
        "  environment: the same as recorded at training (Python, NumPy, PyTorch, DVC, MLflow, platform and BLAS "
        "kernel): the difference is not the software's",
    ]


def test_a_registered_model_altered_after_the_fact_is_not_reproduced(reproducible_repo, tmp_path):
    client = store(reproducible_repo)
    model_file = Path(model_folder(client, "gdpipe-torch", "1").removeprefix("file://")) / "artifacts" / "torch.json"
    original = model_file.read_bytes()
    model = json.loads(original)
    model["w"] = 2.5
    model_file.write_text(json.dumps(model))
    try:
        done = reproduce_in(reproducible_repo, "gdpipe-torch@champion", tmp_path / "tmp")
    finally:
        model_file.write_bytes(original)  # the module's other tests read this store
    assert done.stderr.endswith("reproduce] Error 1\n"), done.stdout + done.stderr  # its exit 1; make's is 2
    recorded, rebuilt = hashlib.sha256(json.dumps(model).encode()).hexdigest(), hashlib.sha256(original).hexdigest()
    lines = done.stdout.splitlines()
    start = lines.index("not reproduced: gdpipe-torch version 1 differs from its rebuild in 3 of 13 comparisons:")
    assert lines[start + 1 :] == [
        f"  model file sha256: {recorded[:12]} recorded, {rebuilt[:12]} rebuilt",
        f"  model w: 2.5 recorded, {LESSON_W} rebuilt",
        f"  model f(5): 12.5 recorded, {LESSON_F5} rebuilt",
        "  environment: the same as recorded at training (Python, NumPy, PyTorch, DVC, MLflow, platform and BLAS "
        "kernel): the difference is not the software's",
    ]


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_versions(reproducible_repo, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the promoted project whose store also has versions that cannot be rebuilt, registered through
    MLflow's API: one by hand (no run), one whose run names a commit this clone lacks, one whose run's params are
    not its commit's. Returns the copy and each case's MODEL."""
    repo = Path(shutil.copytree(reproducible_repo, tmp_path_factory.mktemp("odd") / "repo", symlinks=True))
    client = store(repo)
    champion = client.get_model_version("gdpipe-torch", "1")
    run = client.get_run(champion.run_id)
    # The model's folder, not its models:/ URI: from that one MLflow would take the version's run, its lineage.
    source = model_folder(client, "gdpipe-torch", "1")

    def version(tags: dict[str, str], params: dict[str, str]) -> str:
        made = client.create_run(run.info.experiment_id, tags=tags)
        for key, value in params.items():
            client.log_param(made.info.run_id, key, value)
        return client.create_model_version("gdpipe-torch", source, run_id=made.info.run_id).version

    by_hand = client.create_model_version("gdpipe-torch", source).version
    unknown = version(run.data.tags | {reproduce.COMMIT_TAG: "0123456789ab" * 3 + "0123"}, run.data.params)
    other_lr = version(run.data.tags, run.data.params | {"train.lr": "0.02"})
    return repo, {
        "by hand": f"gdpipe-torch/{by_hand}",
        "unknown": f"gdpipe-torch/{unknown}",
        "lr": f"gdpipe-torch/{other_lr}",
    }


def test_each_bad_input_is_one_line_and_exit_2(odd_versions, tmp_path, monkeypatch, capsys):
    repo, models = odd_versions
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    commit = git(repo, "rev-parse", "HEAD").strip()
    where = f"sqlite:///{repo.resolve() / 'mlruns' / 'mlflow.db'}"
    versions = "versions: 1, 2, 3, 4; challenger is version 1, champion is version 1"
    cases = {
        "": "which model? make reproduce MODEL=name@alias or MODEL=name/version, as in MODEL=gdpipe-torch@champion",
        "gdpipe-torch": "MODEL='gdpipe-torch' names no model version: write name@alias or name/version",
        "gdpipe-nope@champion": f"{where} has no registered model gdpipe-nope (it has gdpipe-numpy, gdpipe-torch)",
        "gdpipe-torch@best": f"gdpipe-torch has no alias best in {where} ({versions})",
        "gdpipe-torch/9": f"gdpipe-torch has no version 9 in {where} ({versions})",
        models["by hand"]: f"gdpipe-torch version 2 in {where} has no lineage to rebuild it from (no run of it exists)",
        models["unknown"]: (
            "commit 0123456789ab, which gdpipe-torch version 3 was made from, is not in this clone: git fetch it from "
            "the remote that has it (a shallow clone needs git fetch --unshallow), then run again"
        ),
        models["lr"]: (
            f"the params.yaml of commit {commit[:12]} does not give gdpipe-torch version 4's fingerprint (train.lr is "
            "0.01 there, 0.02 in its run): its result was not made from that commit, so it cannot be rebuilt from it"
        ),
    }
    before = state(repo)
    for model, message in cases.items():
        assert run_main(reproduce.main, [model]) == 2, model
        err = capsys.readouterr().err
        assert_one_error_line(err, message)
    assert state(repo) == before  # the params check's worktree is gone too

    for uri, message in {
        f"http://127.0.0.1:{free_port()}": "refused the connection: is the server running",
        f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}": f"no MLflow store at {tmp_path / 'none' / 'mlflow.db'}:",
    }.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert run_main(reproduce.main, ["gdpipe-torch@champion"]) == 2
        assert_one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "none").exists()  # MLflow made no store there


def test_make_reproduce_without_model_says_which_to_give(reproducible_repo):
    done = make(reproducible_repo, "reproduce", env=child_env())
    assert done.returncode == 2 and done.stdout.endswith('-m gdpipe.track.reproduce "$MODEL"\n')
    error, make_line = done.stderr.splitlines()
    assert error == (
        "gdpipe: error: which model? make reproduce MODEL=name@alias or MODEL=name/version, as in "
        "MODEL=gdpipe-torch@champion"
    )
    assert make_line.endswith("reproduce] Error 2")


# --- Ctrl-C and a real server ---------------------------------------------------------------------


def test_ctrl_c_stops_the_rebuild_and_removes_the_worktree(reproducible_repo, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = state(reproducible_repo)
    command = [sys.executable, "-m", "gdpipe.track.reproduce", "gdpipe-numpy@champion"]
    env = src_env(TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    process = subprocess.Popen(
        command, cwd=reproducible_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        # The data set made: the train stages run next, or already.
        wait_for(lambda: any(tmp.glob("gdpipe-reproduce-*/*/data/dataset.npy")), process, 120, "the data set")
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the command's group; the rebuild runs in its own
        err = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert err == (
        "gdpipe: interrupted (SIGINT); the rebuild was stopped and its temporary worktree removed; no output was "
        "half-written\n"
    )
    assert list(tmp.iterdir()) == []
    assert state(reproducible_repo) == before
    time.sleep(0.5)
    working_there = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cwd(pid).startswith(str(tmp))]
    assert working_there == []  # no stage of the rebuild runs on


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone, or not ours to read
        return ""


def test_a_champion_on_an_mlflow_server_rebuilds_identical(reproducible_repo, tmp_path, reaper):
    """A plain `mlflow server` on sqlite, with proxied artifacts: what make reproduce needs of a server is its
    REST API, which make server's PostgreSQL-backed one shares (tests/test_team_server.py starts that one)."""
    port, log = free_port(), tmp_path / "server.log"
    server_command = [
        str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(
            server_command, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )
    reaper(server)  # with its workers, if the test process is killed
    url = f"http://127.0.0.1:{port}"
    wait_for_server(url, server, log)
    repo = Path(shutil.copytree(reproducible_repo, tmp_path / "repo", symlinks=True))
    promoted = make(repo, "promote", env=child_env(MLFLOW_TRACKING_URI=url))  # publishes there, then promotes
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert promoted.stdout.endswith("gdpipe-torch: version 1 is champion (was none)\n")

    done = reproduce_in(repo, "gdpipe-numpy@champion", tmp_path / "tmp", MLFLOW_TRACKING_URI=url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        done.stdout.splitlines()[-1] == "reproduced: gdpipe-numpy version 1 is identical (8 outputs, model, 8 metrics)"
    )
    assert rows(done.stdout)["model w"] == [LESSON_W, LESSON_W, "same"]
    assert list((tmp_path / "tmp").iterdir()) == []
    os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
    server.wait(timeout=30)
