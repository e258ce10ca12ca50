"""Secrets and the network: credentials reach no param, tag, artifact, file or output; the default store
needs no network."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support import (
    REPO,
    assert_one_error_line,
    files_under,
    free_port,
    run_track,
    src_env,
    track_here,
)

# A test hook, installed as sitecustomize: every attempt to reach the network is logged and refused.
NO_NETWORK_HOOK = """
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
"""


@pytest.fixture(scope="module")
def guarded_track_run(workspace, tmp_path_factory):
    """The track stage on a fresh default store, with planted credentials in the environment and no network."""
    root = tmp_path_factory.mktemp("guarded")
    folder = root / "ws"
    shutil.copytree(workspace, folder)
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_NETWORK_HOOK)
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
