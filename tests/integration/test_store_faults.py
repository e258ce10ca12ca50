"""When the disk or the store's file fails: a full disk at every stage, a truncated, a garbled and a half-built
mlflow.db, a read-only folder. Each is one line and exit 2; nothing is lost or half-written, and the store is
usable again once the cause is gone (a half-built one on its own).

The full disk is real: a small tmpfs mounted by the test. That needs root: `.ci/run` on this project's machines
runs as root; GitHub's runner is not root, and there this test is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy.exc
from mlflow import MlflowClient

from support import (
    EVALUATE_ARGS,
    PROGRAMS,
    assert_one_error_line,
    build_workspace,
    files_under,
    run_stage,
    run_track,
    runs_in_store,
    src_env,
    stage,
    track_here,
)


@pytest.fixture
def small_disk():
    """A 16 MiB file system of its own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="gdpipe-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        mountpoint.rmdir()


def fill(disk: Path) -> Path:
    """Fill the disk to its last byte; the filler, to delete when the space should come back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 512, 1):  # big blocks, then the last small ones
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "one-more-byte").write_bytes(b"\0")
    assert full.value.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def published(workspace, tmp_path_factory, empty_store) -> Path:
    """A workspace whose result is published to a sqlite store in its mlruns/ (runs.json not kept)."""
    folder = Path(shutil.copytree(workspace, tmp_path_factory.mktemp("published") / "ws"))
    assert track_here(folder, empty_store(folder / "mlruns" / "mlflow.db")) == (0, "")
    (folder / "runs.json").unlink()
    return folder


def fingerprints(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files_under(folder)
    }


def store_env(db: Path) -> dict[str, str]:
    return src_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")


def statuses(db: Path) -> list[str]:
    return sorted(status for _, status in runs_in_store(db))


def test_a_full_disk_at_every_stage_is_one_line_and_the_old_outputs_stay(workspace, small_disk, monkeypatch):
    """generate, train and evaluate overwrite their outputs on a full disk: each fails in one line naming the
    file, and the previous outputs are there, byte for byte, with no temporary file beside them."""
    folder = Path(shutil.copytree(workspace, small_disk / "ws"))
    before = fingerprints(folder)
    filler = fill(small_disk)
    monkeypatch.chdir(folder)
    train = "--variant numpy --data data/dataset.npy --history history/numpy.csv --model models/numpy.json"
    commands = {
        "data/dataset.npy": (stage("generate").main, ["--params", "params.yaml", "--out", "data/dataset.npy"]),
        "history/numpy.csv": (stage("train").main, ["--params", "params.yaml", *train.split()]),
        "metrics.json": (stage("evaluate").main, EVALUATE_ARGS),
    }
    for output, (main, argv) in commands.items():
        code, stderr = run_stage(main, argv)
        assert code == 2, (output, stderr)
        assert_one_error_line(stderr, "cannot write it, the disk is full", "free some space")
        assert fingerprints(folder) == before, output
    filler.unlink()
    for main, argv in commands.values():
        assert run_stage(main, argv) == (0, "")
    timing = "history/numpy.timing.json"  # when training ran: the one output that differs on a rerun
    assert fingerprints(folder) | {timing: ""} == before | {timing: ""}  # once there is room, the same bytes


def test_a_full_disk_during_the_first_setup_leaves_a_half_built_store_that_the_next_publish_makes_anew(
    workspace, small_disk
):
    folder = Path(shutil.copytree(workspace, small_disk / "ws"))
    db = small_disk / "store" / "mlflow.db"
    (small_disk / "store").mkdir()
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 600 * 1024)  # room for part of MLflow's tables, not all
    done = run_track(folder, store_env(db))
    assert done.returncode == 2
    assert_one_error_line(done.stderr, f"MLflow tracking store sqlite:///{db} is on a full disk", "free some space")
    assert not (folder / "runs.json").exists() and not (folder / "published.json").exists()
    filler.unlink()
    # Half-built indeed: MLflow itself cannot open it, its migration stopped between two steps.
    with pytest.raises(sqlalchemy.exc.OperationalError, match="table _alembic_tmp_experiments already exists"):
        MlflowClient(f"sqlite:///{db}").search_runs(["0"])
    assert db.stat().st_size > 0
    done = run_track(folder, store_env(db))
    assert done.returncode == 0, done.stderr
    assert statuses(db) == ["FINISHED", "FINISHED"]


def test_a_full_disk_while_publishing_loses_nothing_and_the_result_is_published_once_there_is_room(
    workspace, small_disk, empty_store
):
    """A store holding one result's runs; a second result meets a full disk half-way: one line, the first
    result's runs untouched, and once there is room the second is published once (its broken run FAILED or
    KILLED, never RUNNING)."""
    db = small_disk / "store" / "mlflow.db"
    first = Path(shutil.copytree(workspace, small_disk / "first"))
    assert track_here(first, empty_store(db)) == (0, "")
    kept = dict(runs_in_store(db))
    second = build_workspace(small_disk / "second", {"train.epochs": 1000})
    filler = fill(small_disk)
    done = run_track(second, store_env(db))
    assert done.returncode == 2
    assert_one_error_line(done.stderr, f"MLflow tracking store sqlite:///{db} ", "full disk", "(publishing numpy")
    filler.unlink()
    done = run_track(second, store_env(db))
    assert done.returncode == 0, done.stderr
    runs = dict(runs_in_store(db))
    assert {run_id: runs[run_id] for run_id in kept} == kept
    published = json.loads((second / "runs.json").read_text())
    assert {runs[entry["run_id"]] for entry in published.values()} == {"FINISHED"}
    assert set(runs.values()) <= {"FINISHED", "FAILED", "KILLED"} and list(runs.values()).count("FINISHED") == 4


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda data: data[: len(data) // 3], "malformed"),  # truncated
        (lambda data: data[:8192] + os.urandom(32768) + data[8192 + 32768 :], "malformed"),  # garbled pages
        (lambda data: os.urandom(len(data)), "not a database"),  # not a database at all
    ],
    ids=["truncated", "garbled", "not-a-database"],
)
def test_a_damaged_store_is_one_line_and_never_deleted(published, tmp_path, damage, what):
    folder, db = damaged_store(published, tmp_path, damage)
    damaged = db.read_bytes()
    done = run_track(folder, store_env(db))
    assert done.returncode == 2
    assert_one_error_line(done.stderr, f"is damaged ({what})", f"mv '{db}' '{db}.damaged'", "make repro")
    assert db.read_bytes() == damaged and not (folder / "runs.json").exists()


def test_once_a_damaged_store_is_moved_aside_as_its_line_says_a_new_one_works(published, tmp_path):
    """Whatever the damage: after the line's `mv` the next publish makes a new store, the damaged one kept beside it."""
    folder, db = damaged_store(published, tmp_path, lambda data: data[: len(data) // 3])
    db.rename(f"{db}.damaged")
    done = run_track(folder, store_env(db))
    assert done.returncode == 0, done.stderr
    assert statuses(db) == ["FINISHED", "FINISHED"] and Path(f"{db}.damaged").exists()


def damaged_store(published: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    """A copy of the published workspace, and a damaged copy of its store (in a folder of its own)."""
    folder = Path(shutil.copytree(published, tmp_path / "ws"))
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(damage((folder / "mlruns" / "mlflow.db").read_bytes()))
    return folder, db


def test_a_read_only_store_is_one_line_and_works_again_once_writable(workspace, small_disk, empty_store):
    folder = Path(shutil.copytree(workspace, small_disk / "ws"))
    db = small_disk / "store" / "mlflow.db"
    empty_store(db)
    # A child: a store this process has opened is a file open for writing, and a remount read-only refuses.
    assert run_track(folder, store_env(db)).returncode == 0
    other = build_workspace(small_disk / "other", {"train.epochs": 50})
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        done = run_track(other, store_env(db))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, "cannot be written (permission denied or read-only)", str(db.parent))
    assert run_track(other, store_env(db)).returncode == 0
    assert statuses(db) == ["FINISHED"] * 4


@pytest.mark.parametrize(
    "statements",
    ["BEGIN; SELECT count(*) FROM runs", "BEGIN EXCLUSIVE"],
    ids=["a-reader-in-a-transaction", "a-writer-holding-it"],
)
def test_a_store_held_by_another_process_is_one_line_naming_the_file_after_the_wait_given(
    own_workspace, tmp_path, empty_store, reaper, statements
):
    """Publishing waits GDPIPE_STORE_WAIT seconds (1 here) for the holder, then says what holds the store and what
    to do; once the holder lets go, the same publish works."""
    db = tmp_path / "store" / "mlflow.db"
    empty_store(db)
    command = [sys.executable, PROGRAMS / "hold_store.py", str(db), statements]
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reaper(holder)
    assert holder.stdout.readline() == "held\n"
    env = store_env(db) | {"GDPIPE_STORE_WAIT": "1"}
    done = run_track(own_workspace, env)
    assert done.returncode == 2
    assert_one_error_line(
        done.stderr,
        f"MLflow tracking store sqlite:///{db} is locked by another process: the sqlite file {db} stayed locked "
        "for 1 s (GDPIPE_STORE_WAIT)",
        "make ui",
        "close it or wait",
    )
    assert statuses(db) == [] and not (own_workspace / "runs.json").exists()
    holder.communicate("")  # the holder ends its transaction and exits
    done = run_track(own_workspace, env)
    assert done.returncode == 0, done.stderr
    assert statuses(db) == ["FINISHED", "FINISHED"]
