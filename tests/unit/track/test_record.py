"""What a run holds, before MLflow: the epochs its per-epoch metrics keep (`spread`), its fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gdpipe.core.files import read_json
from gdpipe.track.record import build_record, spread


def test_fewer_points_than_the_limit_are_all_kept():
    assert spread(5, 1000).tolist() == [0, 1, 2, 3, 4]
    assert spread(1000, 1000).tolist() == list(range(1000))
    assert spread(1, 2).tolist() == [0] and spread(0, 2).tolist() == []


def test_a_long_run_keeps_exactly_the_limit_evenly_spread_first_and_last_in():
    assert spread(11, 3).tolist() == [0, 5, 10]
    assert spread(10, 4).tolist() == [0, 3, 6, 9]
    assert spread(5, 2).tolist() == [0, 4]
    assert spread(1000, 3).tolist() == [0, 500, 999]  # 499.5 rounds up, in integers
    rows = spread(1_000_000, 1000)
    assert rows.size == 1000 and rows[0] == 0 and rows[-1] == 999_999
    assert set(np.diff(rows).tolist()) == {1001}  # 999,999 = 999 x 1001: a whole step
    assert spread(1000, 7).tolist() == [0, 167, 333, 500, 666, 833, 999]  # steps of 166.5, rounded half up


@given(count=st.integers(0, 10**7), limit=st.integers(2, 5000))  # any number of epochs gdpipe trains
def test_spread_holds_for_any_count_and_limit(count, limit):
    rows = spread(count, limit)
    assert rows.size == min(count, limit)
    if count:
        assert rows[0] == 0 and rows[-1] == count - 1
    gaps = np.diff(rows)
    assert (gaps >= 1).all()  # strictly increasing: no epoch twice
    if gaps.size:
        assert gaps.max() - gaps.min() <= 1  # as even as whole rows allow
    assert np.array_equal(rows, spread(count, limit))  # deterministic


def torch_record(ws, params):
    return build_record(
        params, read_json(ws / "metrics.json"), ws / "data/dataset.npy", "torch", ws / "history/torch.csv",
        ws / "models/torch.json", ws / "metrics.json", (), {},
    )  # fmt: skip


@pytest.mark.parametrize("points", [2, 50, 99, 100, 1000])
def test_the_limit_changes_what_is_logged_but_not_the_runs_fingerprint(workspace, params, points):
    """The fingerprint finds the result's run; how many of its epochs the charts hold is not the result."""
    built = torch_record(workspace, params({"track.max_points_per_metric": points}))
    assert built.history.epoch.size == 100  # the lesson's 100 epochs, all of them in the record's history
    assert built.metric_rows.tolist() == spread(100, points).tolist()
    if points < 100:
        assert built.tags["gdpipe.metric_points"] == (
            f"w and loss at {points} of 100 recorded epochs, evenly spread from the first to the last; "
            "every one in the artifact torch.csv"
        )
    else:
        assert "gdpipe.metric_points" not in built.tags  # the lesson's result logs what it always did
    assert built.fingerprint == torch_record(workspace, params()).fingerprint


def test_the_number_of_processes_that_trained_is_a_tag_not_part_of_the_fingerprint(own_workspace, params):
    """Any number of processes gives the same bytes, so the same run: the tag says how many trained it, when known."""
    timing = own_workspace / "history" / "torch.timing.json"
    assert torch_record(own_workspace, params()).tags["gdpipe.world_size"] == "1"
    alone = torch_record(own_workspace, params())
    timing.write_text(timing.read_text().replace('"world_size": 1', '"world_size": 3'))
    assert torch_record(own_workspace, params()).tags["gdpipe.world_size"] == "3"
    assert torch_record(own_workspace, params()).fingerprint == alone.fingerprint
    timing.unlink()  # DVC restored the history from its cache: who trained it is not known
    assert "gdpipe.world_size" not in torch_record(own_workspace, params()).tags
