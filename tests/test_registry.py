"""The model lifecycle: every result a registered model version (once), the gate promotes the champion,
`make serve` answers f(x) over HTTP, and the pyfunc model says what it accepts."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from support import REPO, VARIANTS, dvc, make, run_stage, served, stages_run

MODEL_CODE = REPO / "src" / "gdpipe" / "track" / "pyfunc_model.py"


def store(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def set_epochs(repo: Path, old: int, new: int) -> None:
    path = repo / "params.yaml"
    text = path.read_text()
    assert text.count(f"  epochs: {old}\n") == 1
    path.write_text(text.replace(f"  epochs: {old}\n", f"  epochs: {new}\n"))


# --- the pyfunc model, in this process --------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """The model class as MLflow loads it from code, with the lesson's float32 w."""
    linear = runpy.run_path(str(MODEL_CODE))["LinearModel"]()
    linear.w = 1.9999996423721313
    return linear


@pytest.mark.parametrize(
    "given",
    [[5.0, 7.0], [5, 7], np.array([5.0, 7.0]), np.array([[5.0], [7.0]], dtype=np.float32), pd.Series([5.0, 7.0]),
     pd.DataFrame({"x": [5.0, 7.0]})],
    ids=["list", "ints", "1-D", "Nx1", "Series", "DataFrame"],
)  # fmt: skip
def test_the_model_takes_every_usual_form_of_x(model, given):
    assert model.predict(given) == [1.9999996423721313 * 5.0, 1.9999996423721313 * 7.0]


@pytest.mark.parametrize(
    ("given", "got"),
    [
        (pd.DataFrame({"x": [5.0], "y": [1.0]}), "a DataFrame with 2 columns"),
        (np.array([[5.0, 1.0]]), "an array of shape (1, 2)"),
        (["five"], "values of type <U4"),
        ([5.0, None], "values of type object"),
        ([], "0 values (1 to 100,000 per request)"),
        ([float("nan")], "NaN or infinity"),
        ([float("inf")], "NaN or infinity"),
        (np.ones(100_001), "100001 values (1 to 100,000 per request)"),
    ],
)
def test_anything_else_is_a_bad_request_saying_what_is_accepted(model, given, got):
    with pytest.raises(MlflowException) as err:
        model.predict(given)
    assert err.value.get_http_status_code() == 400
    assert err.value.message == (
        "gdpipe's model takes x as a list of numbers, a 1-D or Nx1 array, a one-column DataFrame or a Series "
        f"of finite numbers; got {got}"
    )


# --- registration -----------------------------------------------------------------------------


def test_each_result_is_one_version_with_its_lineage_and_a_forced_rerun_makes_none(own_reproduced_repo):
    repo = own_reproduced_repo
    done = dvc(repo, "repro", "--force", "--single-item", "track")  # publish to the copy's own, empty store
    client = store(repo)
    runs = json.loads((repo / "runs.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    for variant in VARIANTS:
        name = f"gdpipe-{variant}"
        run = runs[variant]
        assert (run["model_name"], run["model_version"]) == (name, "1")
        assert f"{variant}: new run {run['run_id']} " in done.stdout and f"; model {name} version 1\n" in done.stdout
        version = client.get_model_version(name, "1")
        assert version.run_id == run["run_id"] and version.source.startswith("models:/m-")
        assert version.tags["run_id"] == run["run_id"] and version.tags["git.commit"] == commit
        published = json.loads((repo / "published.json").read_text())[variant]
        assert version.tags["gdpipe.fingerprint"] == run["fingerprint"] == published["fingerprint"]
        assert len(version.tags["data.sha256"]) == 64 and version.tags["gdpipe.status"] == "trained"
        assert version.description == f"{variant}, lr 0.01, 100 epochs: f(5) = 10.000 (w = 2.000000)"
        assert client.get_registered_model(name).aliases == {"challenger": 1}
    experiment = client.get_experiment_by_name("gradient-descent")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    again = dvc(repo, "repro", "--force", "--single-item", "track")
    assert again.stdout.count("already published as run") == 2 and again.stdout.count(" version 1\n") == 2
    for variant in VARIANTS:
        assert [version.version for version in client.search_model_versions(f"name = 'gdpipe-{variant}'")] == [1]


# --- promotion and serving --------------------------------------------------------------------


@pytest.fixture(scope="module")
def promoted_repo(reproduced_repo, tmp_path_factory, empty_store) -> Path:
    """A copy of the project after `make promote`: champion on both variants (shared: tests only read it)."""
    repo = tmp_path_factory.mktemp("promoted") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")  # a store of its own, with no experiment yet
    (repo / "published.json").unlink()  # as in a fresh clone: track publishes to this store
    done = make(repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    promoted = "gdpipe-numpy: version 1 is champion (was none)\ngdpipe-torch: version 1 is champion (was none)\n"
    assert done.stdout.endswith(promoted)
    return repo


def test_promote_moves_champion_only_when_the_gate_passes_and_a_known_result_adds_no_version(promoted_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(promoted_repo, repo, symlinks=True)  # the store's artifacts stay the original's: read only
    client = store(repo)
    set_epochs(repo, 100, 5)
    failed = make(repo, "promote")
    assert failed.returncode != 0
    assert "FAIL: 4 of 7 checks failed" in failed.stdout
    for variant in VARIANTS:
        why = f"the gate failed (abs_error ({variant}), loss ({variant}))"
        assert f"gdpipe-{variant}: version 1 stays champion; version 2 was not promoted: {why}\n" in failed.stdout
        assert client.get_registered_model(f"gdpipe-{variant}").aliases == {"champion": 1, "challenger": 2}
    set_epochs(repo, 5, 100)
    done = make(repo, "promote")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "track" in stages_run(done.stdout)  # the rest comes back from the run-cache
    kept = "gdpipe-numpy: version 1 is champion (already)\ngdpipe-torch: version 1 is champion (already)\n"
    assert done.stdout.endswith(kept)
    for variant in VARIANTS:
        assert sorted(int(v.version) for v in client.search_model_versions(f"name = 'gdpipe-{variant}'")) == [1, 2]
        assert client.get_registered_model(f"gdpipe-{variant}").aliases == {"champion": 1, "challenger": 1}


def test_promote_refuses_a_verdict_about_other_metrics(promoted_repo, tmp_path, monkeypatch):
    from gdpipe.track import registry

    repo = tmp_path / "repo"
    shutil.copytree(promoted_repo, repo, symlinks=True)
    monkeypatch.chdir(repo)
    # runs.json names the original's store; nothing is written to it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{promoted_repo / 'mlruns' / 'mlflow.db'}")
    (repo / "metrics.json").write_text((repo / "metrics.json").read_text().replace("10.0", "10.5"))
    assert run_stage(registry.main, ["promote"]) == (
        2,
        "gdpipe: error: reports/check.json is about another metrics.json; run make promote (it runs the gate first)\n",
    )


def test_serve_without_a_champion_says_to_promote_first(own_reproduced_repo, monkeypatch):
    from gdpipe.track import registry

    monkeypatch.chdir(own_reproduced_repo)
    uri = f"sqlite:///{own_reproduced_repo / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    expected = f"gdpipe: error: gdpipe-torch has no champion in {uri}: run make promote first\n"
    assert run_stage(registry.main, ["serve"]) == (2, expected)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


GOOD = [
    (b'{"inputs": [5.0, 7.0]}', [9.999998211860657, 13.99999749660492]),
    (b'{"inputs": [[5.0], [7.0]]}', [9.999998211860657, 13.99999749660492]),
    (b'{"dataframe_split": {"columns": ["x"], "data": [[5.0], [7.0]]}}', [9.999998211860657, 13.99999749660492]),
    (b'{"dataframe_records": [{"x": 5.0}]}', [9.999998211860657]),
]
BAD = [
    (b'{"inputs": ["five"]}', "got values of type"),
    (b'{"inputs": [NaN]}', "got NaN or infinity"),
    (b'{"inputs": [Infinity]}', "got NaN or infinity"),
    (b'{"instances_missing": [5.0]}', "exactly one of the input fields"),
    (b'{"inputs": [[5.0, 1.0]]}', "got an array of shape (1, 2)"),
    (b'{"inputs": []}', "got 0 values"),
    (b'{"inputs": [' + b", ".join([b"5.0"] * 2_000_000) + b"]}", "got 2000000 values (1 to 100,000 per request)"),
]


def test_make_serve_answers_f_of_x_over_http_and_survives_bad_requests(promoted_repo):
    assert len(BAD[-1][0]) > 10_000_000
    with served(promoted_repo, "serve", "SERVE_PORT") as url:
        for body, message in BAD:
            code, answer = post(f"{url}/invocations", body)
            assert code == 400 and message in answer["message"], (body[:60], code, answer)
            assert post(f"{url}/invocations", GOOD[0][0]) == (200, {"predictions": GOOD[0][1]})  # still serving
        for body, predictions in GOOD:
            assert post(f"{url}/invocations", body) == (200, {"predictions": predictions}), body
    log = promoted_repo.parent / "serve.log"
    assert "serving models:/gdpipe-torch@champion on http://127.0.0.1:" in log.read_text()


def test_ci_promotes_to_the_team_server_only_on_pushes_to_main():
    from ruamel.yaml import YAML

    workflow = YAML(typ="safe").load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    promote = workflow["jobs"]["promote"]
    assert promote["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert promote["needs"] == "test-and-check"  # after the tests and the gate passed
    assert set(promote["env"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert all(value == f"${{{{ secrets.{key} }}}}" for key, value in promote["env"].items())
    assert "make promote" in promote["steps"][-1]["run"]
    assert "secrets." not in json.dumps(workflow["jobs"]["test-and-check"])  # pull requests never see them


class FakeRegistry:
    """The two calls promote makes, on a dict of aliases."""

    def __init__(self, champions: dict[str, str]):
        self.champions = champions

    def get_model_version_by_alias(self, name, alias):
        if name not in self.champions:
            raise MlflowException.invalid_parameter_value("alias not found")  # as the sqlite registry answers
        return type("Version", (), {"version": self.champions[name]})

    def set_registered_model_alias(self, name, alias, version):
        self.champions[name] = version


def test_a_failed_gate_gives_each_variant_its_own_reasons_and_moves_nothing():
    from gdpipe.track.registry import promote

    registry = FakeRegistry({"gdpipe-numpy": "1"})
    current = {v: {"model_name": f"gdpipe-{v}", "model_version": "2", "status": "trained"} for v in VARIANTS}
    verdict = {"passed": False, "failed": ["loss (torch)", "parity.max_abs_w_diff (both)"]}
    assert promote(registry, current, verdict) == (
        [
            "gdpipe-numpy: version 1 stays champion; version 2 was not promoted: "
            "the gate failed (parity.max_abs_w_diff (both))",
            "gdpipe-torch: no version is champion; version 2 was not promoted: "
            "the gate failed (loss (torch), parity.max_abs_w_diff (both))",
        ],
        False,
    )
    assert registry.champions == {"gdpipe-numpy": "1"}
    passed = {"passed": True, "failed": []}
    current["torch"] |= {"model_version": None, "status": "diverged"}  # cannot pass the gate, but never promoted
    lines, promoted = promote(registry, current, passed)
    assert lines == [
        "gdpipe-numpy: version 2 is champion (was 1)",
        "gdpipe-torch: no version is champion; this result has no model to promote (it diverged before its first step)",
    ]
    assert not promoted and registry.champions == {"gdpipe-numpy": "2"}
