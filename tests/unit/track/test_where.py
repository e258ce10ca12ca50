"""Where the result is: runs.json is current only for this result in the store named now, and the last
line of make repro names that store without its password. The real make repro:
tests/integration/test_named_store.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gdpipe.core.command import InputError
from gdpipe.track import where
from support import VARIANTS

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
