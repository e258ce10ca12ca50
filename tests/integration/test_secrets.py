"""Secrets and the network: credentials reach no param, tag, artifact, file or output; the default store
needs no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support import REPO, assert_one_error_line, files_under, free_port, run_track, sitecustomize, src_env, track_here


@pytest.fixture(scope="module")
def guarded_track_run(workspace, tmp_path_factory):
    """The track stage on a fresh default store, with planted credentials in the environment and no network."""
    root = tmp_path_factory.mktemp("guarded")
    folder = root / "ws"
    shutil.copytree(workspace, folder)
    hook = root / "hook"
    sitecustomize(hook, "no_network")
    planted = {
        key: f"planted-{key.lower()}-{uuid.uuid4().hex}"
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    }
    env = src_env(
        PYTHONPATH=f"{hook}{os.pathsep}{REPO / 'src'}", GDPIPE_TEST_NETWORK_LOG=str(root / "network.log"), **planted
    )
    # gdpipe's own default must keep MLflow quiet: nothing that turns telemetry off by itself (CI, pytest).
    for name in (
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "PYTEST_CURRENT_TEST",
        "CI",
        "GITHUB_ACTIONS",
        "GITLAB_CI",
        "JENKINS_URL",
    ):
        env.pop(name, None)
    done = run_track(folder, env)
    assert done.returncode == 0, done.stderr
    return folder, done, planted, root / "network.log"


def test_no_network_is_needed_with_the_default_store(guarded_track_run):
    folder, done, _, network_log = guarded_track_run
    assert (folder / "mlruns" / "mlflow.db").exists() and done.stdout.count("new run") == 2
    assert not network_log.exists(), network_log.read_text()


def test_planted_credentials_reach_no_param_tag_artifact_file_or_output(guarded_track_run, tmp_path):
    """MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN: in no run's params, tags or artifacts, no file, no output."""
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
    # Every file the stage could have written, byte for byte: runs.json, published.json, the store, its artifacts,
    # logged models.
    texts |= {str(path): path.read_bytes().decode("latin-1") for path in files_under(folder)}
    assert len(texts) > 20
    leaks = {name for name, text in texts.items() for secret in secrets if secret in text}
    assert not leaks, leaks


def test_a_password_in_the_tracking_uri_or_the_environment_is_never_printed(own_workspace, monkeypatch):
    """MLflow's own error message repeats the URI with its password; gdpipe's line shows neither it nor a token."""
    folder = own_workspace
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret-token")
    code, stderr = track_here(folder, f"http://alice:s3cret-in-uri@127.0.0.1:{port}")
    assert code == 2
    assert_one_error_line(stderr, f"MLflow tracking store http://127.0.0.1:{port} refused the connection")
    assert "s3cret" not in stderr and "alice" not in stderr, stderr


# A tracking URI with a password that urllib cannot parse: MLflow's traceback printed it whole.
MALFORMED_URIS = {
    "a typo in the port": ("http://alice:s3cret-pw@127.0.0.1:50x2", "its port is not a number"),
    "a port out of range": ("http://alice:s3cret-pw@127.0.0.1:99999", "its port is out of range"),
    "an unclosed bracket": ("http://alice:s3cret-pw@[::1:5002", "an IPv6 address must be one bracketed host"),
    "a '/' in the password": ("http://alice:s3cret/pw@127.0.0.1:5002", "its port is not a number"),
}


@pytest.mark.parametrize(("uri", "why"), MALFORMED_URIS.values(), ids=MALFORMED_URIS)
def test_a_tracking_uri_that_cannot_be_parsed_is_one_line_without_its_password_before_anything_runs(
    own_workspace, uri, why
):
    """The config check (make repro's first step) and the track stage, each a child: one line, exit 2, the host
    named, no password and no user name; the stage writes no output."""
    env = src_env(MLFLOW_TRACKING_URI=uri)
    check = subprocess.run(
        [sys.executable, "-m", "gdpipe.core.config", "params.yaml"],
        cwd=own_workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    done = run_track(own_workspace, env)
    for process in (check, done):
        assert process.returncode == 2, process.stderr
        assert_one_error_line(process.stderr, "MLFLOW_TRACKING_URI=http://", "cannot be parsed", why, "%2F")
        assert "s3cret" not in process.stderr and "alice" not in process.stderr, process.stderr
    assert "(credentials not shown)" in done.stderr
    assert not (own_workspace / "runs.json").exists() and not (own_workspace / "published.json").exists()
