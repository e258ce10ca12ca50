"""The model registry on sqlite stores: every result a registered model version (once) with its lineage;
`promote` moves both champions to one result, whole or not at all, says the truth when promotions race, and
a promotion stopped half-way is never served. `make promote` and `make serve` on a copy of the project:
test_promoted.py; the pyfunc model: test_pyfunc_model.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from promotions import assert_one_champion_per_round, champions, make_results
from support import REPO, VARIANTS, dvc, run_stage


def store(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


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


def as_current(result: dict[str, str], **changes: dict) -> dict[str, dict]:
    """runs.json's entries for a result (name -> version), as promote reads them."""
    current = {
        name.rsplit("-", 1)[1]: {"model_name": name, "model_version": v, "status": "trained"}
        for name, v in result.items()
    }
    for variant, change in changes.items():
        current[variant] |= change
    return current


PASSED = {"passed": True, "failed": []}


def test_a_result_is_promoted_whole_or_not_at_all_and_each_variant_says_why(tmp_path, empty_store):

    from gdpipe.track.champion import promote

    client = MlflowClient(empty_store(tmp_path / "mlflow.db"))
    first, second = make_results(client, "gdpipe", 2)  # numpy 1 and torch 2; numpy 2 and torch 1
    names = list(first)
    assert promote(client, as_current(first), PASSED) == (
        ["gdpipe-numpy: version 1 is champion (was none)", "gdpipe-torch: version 2 is champion (was none)"],
        True,
    )
    failed = {"passed": False, "failed": ["loss (torch)", "parity.max_abs_w_diff (both)"]}
    assert promote(client, as_current(second), failed) == (
        [
            "gdpipe-numpy: version 1 stays champion; version 2 was not promoted: "
            "the gate failed (parity.max_abs_w_diff (both))",
            "gdpipe-torch: version 2 stays champion; version 1 was not promoted: "
            "the gate failed (loss (torch), parity.max_abs_w_diff (both))",
        ],
        False,
    )
    assert champions(client, names) == first
    # A gate that passed, with a variant that cannot be promoted (it cannot pass the gate): neither is.
    no_model = as_current(second, torch={"model_version": None, "status": "diverged"})
    assert promote(client, no_model, PASSED) == (
        [
            "gdpipe-numpy: version 1 stays champion; version 2 was not promoted: a result is promoted whole, "
            "and torch cannot be",
            "gdpipe-torch: version 2 stays champion; this result has no model to promote (it diverged before its "
            "first step)",
        ],
        False,
    )
    assert champions(client, names) == first
    assert promote(client, as_current(first), PASSED)[0][0] == "gdpipe-numpy: version 1 is champion (already)"


class StoppedAfter:
    """A client whose promoter is stopped (Ctrl-C) after `writes` writes to the store."""

    def __init__(self, client: MlflowClient, writes: int):
        self.client, self.writes = client, writes

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if not name.startswith("set_"):
            return call

        def write(*args, **kwargs):
            if self.writes == 0:
                raise KeyboardInterrupt
            self.writes -= 1
            return call(*args, **kwargs)

        return write


@pytest.mark.parametrize("writes", [1, 2], ids=["after-the-record", "after-one-alias"])
def test_a_promotion_stopped_half_way_is_never_served_and_the_next_one_settles_it(
    tmp_path, empty_store, monkeypatch, writes
):

    from gdpipe.track import champion, registry

    uri = empty_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    first, second = make_results(client, "gdpipe", 2)
    assert champion.promote(client, as_current(first), PASSED)[1]
    with pytest.raises(KeyboardInterrupt):
        champion.promote(StoppedAfter(client, writes), as_current(second), PASSED)
    assert champions(client, list(first)) == ({"gdpipe-numpy": "2", "gdpipe-torch": "2"} if writes == 2 else first)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    serve = ["serve", "--params", str(REPO / "params.yaml")]
    held = "gdpipe-numpy@champion is version 2, gdpipe-torch@champion is version 2" if writes == 2 else (
        "gdpipe-numpy@champion is version 1, gdpipe-torch@champion is version 2"
    )  # fmt: skip
    assert run_stage(registry.main, serve) == (
        2,
        f"gdpipe: error: the champions in {uri} are not of one result ({held}; the champion result is "
        "gdpipe-numpy 2, gdpipe-torch 1): a promotion is under way or was stopped half-way; wait for it, or run "
        "make promote, then make serve\n",
    )
    # The next promotion, even one the gate refused, settles the champion on the result last promoted.
    failed = {"passed": False, "failed": ["loss (numpy)"]}
    lines, promoted = champion.promote(client, as_current(first), failed)
    assert lines[0].startswith("gdpipe-numpy: version 2 stays champion; ") and not promoted
    assert champions(client, list(first)) == second


# --- promotions at the same time --------------------------------------------------------------


@pytest.mark.parametrize("together", [True, False], ids=["first-writes-together", "started-at-once"])
def test_promotions_at_once_leave_one_result_champion_and_each_promoter_says_the_truth(tmp_path, empty_store, together):

    client = MlflowClient(empty_store(tmp_path / "mlflow.db"))
    results = make_results(client, "race", 3)
    assert_one_champion_per_round(client, results, rounds=20, promoters=2 if together else 3, together=together)
