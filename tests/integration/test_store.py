"""The store's failures in words and its writers' turns, in this process: a lock taken after the wait is
named, a bad GDPIPE_STORE_WAIT is refused, and only a call that lost an insert race is made again. In this
tier, not the unit tier, because gdpipe.track.store imports MLflow (seconds per test worker). The real
stores: test_store_faults.py and test_team_server.py."""

from __future__ import annotations

import re
import sqlite3

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR  # the codes MlflowException takes

from gdpipe.core.command import InputError
from gdpipe.track import failures, store
from gdpipe.track.store import RACE_TRIES, retried_if_raced


def test_a_lock_taken_after_the_wait_is_named_too_and_a_bad_wait_is_refused(monkeypatch, tmp_path):
    """A reader that comes after the wait makes one of MLflow's calls fail after its own 20 s: the same words."""
    db = tmp_path / "mlflow.db"
    locked = sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))
    said = failures.explain(locked, f"sqlite:///{db}")
    assert said.startswith(f"is locked by another process: the sqlite file {db} stayed locked longer than MLflow"), said
    for setting in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("GDPIPE_STORE_WAIT", setting)
        with pytest.raises(InputError, match=f"GDPIPE_STORE_WAIT='{setting}': must be seconds, 0 or more"):
            store.store_wait()


@pytest.mark.parametrize(
    ("failures", "message", "code", "calls"),
    [
        (2, 'duplicate key value violates unique constraint "dataset_pk"', BAD_REQUEST, 3),  # PostgreSQL
        (1, "UNIQUE constraint failed: registered_model_aliases.name", BAD_REQUEST, 2),  # sqlite
        (RACE_TRIES, 'duplicate key value violates unique constraint "dataset_pk"', BAD_REQUEST, RACE_TRIES),
        (1, "Invalid value for parameter 'name'", BAD_REQUEST, 1),  # a bad request, not a race
        (1, "unique constraint, but the server broke", INTERNAL_ERROR, 1),
    ],
    ids=["postgresql", "sqlite", "lost-every-time", "not-a-race", "not-bad-request"],
)
def test_only_a_call_that_lost_an_insert_race_is_made_again(failures, message, code, calls):
    made = []

    def call(value: str, *, twice: bool) -> str:
        made.append((value, twice))
        if len(made) <= failures:
            raise MlflowException(message, error_code=code)
        return value * 2 if twice else value

    if calls > failures:
        assert retried_if_raced(call, "ok", twice=True) == "okok"
    else:
        with pytest.raises(MlflowException, match=re.escape(message)):
            retried_if_raced(call, "ok", twice=True)
    assert made == [("ok", True)] * calls
