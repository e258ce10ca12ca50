"""What make pull brings from a DVC remote is checked, and an interrupted transfer leaves nothing behind:
a corrupt file in the remote or in the cache here stops the pull in one line before it checks out anything
(and dvc repro --pull makes that output anew instead of using it); a Ctrl-C during make push or make pull
leaves no partial file in the remote, the cache or the workspace."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from remotes import clone, workspace_bytes
from support import (
    CACHED,
    assert_one_error_line,
    child_env,
    dvc,
    load_default_params,
    make,
    stages_run,
    wait_for,
    with_overrides,
    write_yaml,
)

# dvc_objects' name for a file it is copying, renamed into place once whole.
PARTIAL = re.compile(r"\.[A-Za-z0-9_-]{22}\.tmp")


def partial_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*.tmp") if PARTIAL.fullmatch(path.name)]


def locked_md5(repo: Path, output: str) -> str:
    stages = YAML(typ="safe").load((repo / "dvc.lock").read_text())["stages"].values()
    return next(out["md5"] for stage in stages for out in stage.get("outs", []) if out["path"] == output)


def corrupt(store: Path, md5: str) -> Path:
    """Change one byte of the object `md5` in a DVC cache or local remote, keeping its read-only mode (as bit
    rot or a bad copy would: DVC trusts a read-only object without hashing it)."""
    copy = store / "files" / "md5" / md5[:2] / md5[2:]
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(data)  # root may write a read-only file; its mode stays 0444
    assert copy.stat().st_mode & 0o777 == 0o444
    return copy


def fresh_clone(origin: Path, folder: Path) -> Path:
    """A git clone in `folder` of the copy that pushed, with its own copy of the remote beside it (the
    committed default remote, ../../gdpipe-storage from .dvc/), which the test may damage."""
    shutil.copytree(origin.parent / "gdpipe-storage", folder / "gdpipe-storage")
    return clone(origin, folder / "repo")


# --- a corrupt file --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(reproduced_repo, tmp_path_factory, empty_store) -> Path:
    """A reproduced copy that ran make push to the committed default remote, the folder beside it."""
    repo = tmp_path_factory.mktemp("origin") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")
    done = make(repo, "push")
    assert done.returncode == 0, done.stdout + done.stderr
    return repo


def test_a_corrupt_file_in_the_remote_stops_make_pull_before_it_checks_out_anything(origin, tmp_path):
    fresh = fresh_clone(origin, tmp_path)
    storage = tmp_path / "gdpipe-storage"
    md5 = locked_md5(origin, "models/numpy.json")
    corrupt(storage, md5)
    before = workspace_bytes(fresh)
    done = make(fresh, "pull")
    assert done.returncode == 2, done.stdout + done.stderr
    # make adds its own "Error 2" line; gdpipe's is the first.
    line = done.stderr.splitlines()[0] + "\n"
    assert_one_error_line(
        line,
        f"remote 'storage' ({storage})",
        "models/numpy.json: the copy there does not match its hash",
        f"{storage}/files/md5/{md5[:2]}/{md5[2:]}",
        "the workspace was left as it was",
    )
    assert workspace_bytes(fresh) == before  # not one output checked out, also not the five good ones


def test_dvc_repro_pull_makes_an_output_whose_remote_copy_is_corrupt_anew_and_never_uses_it(origin, tmp_path):
    fresh = fresh_clone(origin, tmp_path)
    corrupt(tmp_path / "gdpipe-storage", locked_md5(origin, "models/numpy.json"))
    done = dvc(fresh, "repro", "--pull")
    # DVC's verify drops the corrupt copy; --pull then runs the stage instead of failing (DVC 3.67).
    assert "Unable to pull data for stage: 'train@numpy'" in done.stdout, done.stdout
    assert stages_run(done.stdout) == {"train@numpy"}, done.stdout
    for name in [*CACHED, "metrics.json"]:
        assert (fresh / name).read_bytes() == (origin / name).read_bytes(), name


def test_a_corrupt_file_in_the_cache_here_stops_make_pull_and_is_never_checked_out(origin, tmp_path):
    fresh = fresh_clone(origin, tmp_path)
    assert make(fresh, "pull").returncode == 0
    md5 = locked_md5(origin, "data/dataset.npy")
    copy = corrupt(fresh / ".dvc" / "cache", md5)
    (fresh / "data" / "dataset.npy").unlink()  # the next pull would check this one out again
    before = workspace_bytes(fresh)
    done = make(fresh, "pull")
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.splitlines()[0] + "\n"
    assert_one_error_line(line, "data/dataset.npy", str(copy), "does not match its hash", "make pull again")
    assert workspace_bytes(fresh) == before


def test_make_pull_refuses_a_remote_dvc_does_not_verify(origin, tmp_path):
    fresh = fresh_clone(origin, tmp_path)
    dvc(fresh, "remote", "modify", "--local", "storage", "verify", "false")
    before = workspace_bytes(fresh)
    done = make(fresh, "pull")
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.splitlines()[0] + "\n"
    assert_one_error_line(line, "remote 'storage'", "`.venv/bin/dvc remote modify --local storage verify true`")
    assert workspace_bytes(fresh) == before


# --- an interrupted transfer -----------------------------------------------------------------------
# A data set of 20 million samples (a 160 MB object), so that DVC is still copying it when Ctrl-C comes;
# two epochs keep the training short.

BIG = {"data.n_samples": 20_000_000, "data.x_layout": "uniform", "train.epochs": 2}


@pytest.fixture(scope="module")
def big(reproduced_repo, tmp_path_factory, empty_store) -> Path:
    """A reproduced copy with the BIG data set, committed, and no remote yet."""
    repo = tmp_path_factory.mktemp("big") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    shutil.rmtree(repo / "mlruns")
    empty_store(repo / "mlruns" / "mlflow.db")
    write_yaml(repo / "params.yaml", with_overrides(load_default_params(), BIG))
    dvc(repo, "repro")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "commit", "-qam", "big"], cwd=repo, check=True)
    assert (repo / "data" / "dataset.npy").stat().st_size > 150_000_000
    return repo


def interrupted(repo: Path, target: str, watched: Path) -> subprocess.CompletedProcess:
    """`make <target>` in `repo`, sent Ctrl-C (SIGINT to its process group, as a terminal does) once DVC has
    begun to write a partial file in `watched`."""
    command = ["make", "-o", ".venv/.installed", target]
    process = subprocess.Popen(
        command,
        cwd=repo,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(path.stat().st_size for path in partial_files(watched)), process, what="a partial file")
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_an_interrupted_make_push_leaves_no_partial_file_in_the_remote(big):
    storage = big.parent / "gdpipe-storage"
    done = interrupted(big, "push", storage)
    again = make(big, "push")
    assert again.returncode == 0, again.stdout + again.stderr
    assert partial_files(storage) == []
    # Removed at once, once DVC had stopped, and said in the one line Ctrl-C ends with.
    assert done.stderr.startswith("gdpipe: interrupted (SIGINT); removed "), done.stderr
    assert re.search(r"removed \d+ partial files? in remote 'storage' \(", done.stderr), done.stderr
    assert "partial file" not in again.stdout
    md5 = locked_md5(big, "data/dataset.npy")
    assert (storage / "files" / "md5" / md5[:2] / md5[2:]).stat().st_size == (big / "data/dataset.npy").stat().st_size


def test_a_partial_file_another_transfer_left_in_the_remote_goes_with_the_next_make_push(big):
    storage = big.parent / "gdpipe-storage"
    assert make(big, "push").returncode == 0
    # As after kill -9, when nothing could clean up: DVC's name for a copy it had begun.
    left = storage / "files" / "md5" / "00" / ".AAAAAAAAAAAAAAAAAAAAAA.tmp"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half of a file")
    done = make(big, "push")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed 1 partial file in remote 'storage'" in done.stdout and not left.exists(), done.stdout


@pytest.mark.parametrize("during", [".dvc/cache", "data"], ids=["fetch-into-the-cache", "checkout-into-data"])
def test_an_interrupted_make_pull_leaves_no_partial_file_in_the_cache_or_the_workspace(big, tmp_path, during):
    assert make(big, "push").returncode == 0
    fresh = fresh_clone(big, tmp_path)
    done = interrupted(fresh, "pull", fresh / during)
    again = make(fresh, "pull")
    assert again.returncode == 0, again.stdout + again.stderr
    assert partial_files(fresh) == []
    assert done.stderr.startswith("gdpipe: interrupted (SIGINT); removed "), done.stderr
    assert re.search(r"removed \d+ partial files? in this clone", done.stderr), done.stderr
    for name in CACHED:
        assert (fresh / name).read_bytes() == (big / name).read_bytes(), name
