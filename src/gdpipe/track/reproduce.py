"""make reproduce: rebuild a registered model from its lineage, from nothing, and compare it bit for bit.

    python -m gdpipe.track.reproduce gdpipe-torch@champion    # also gdpipe-numpy/3, gdpipe-torch@challenger

1. The lineage, from the registry and the version's run: its git commit, variant, fingerprint and params. The
   store is the one MLFLOW_TRACKING_URI names (the project's own by default), and it is only read.
2. The rebuild: that commit checked out into a temporary git worktree, its stages run there from nothing
   (`dvc repro --force --no-run-cache` with an empty DVC cache of its own: no cache, no run-cache, no remote),
   publishing into a throwaway MLflow store in the same temporary folder. The user's workspace, DVC cache and
   store are never written.
3. The comparison (compare.py), one table: each DVC output's md5 with that commit's dvc.lock; the registered
   model, loaded through MLflow, with the rebuilt one (its file's bytes, w and f(x)); the run's fingerprint
   with the rebuilt run's; the run's metrics with the rebuilt run's, every logged step (all but
   training_seconds, a wall-clock time that no output holds).
4. The worktree and the temporary folder go, also after a failure, Ctrl-C or kill.

Exit 0: identical. 1: something differs; each difference is listed, with what differs between the environment
recorded at training and this one. 2: bad input, in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gdpipe.track import settings

# A command run as `python -m`: MLflow reads some of gdpipe's settings as it is imported, so they come first.
settings.apply()

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from ruamel.yaml import YAML

from gdpipe.core import config
from gdpipe.core.command import InputError, Terminated, run_command, signals_held
from gdpipe.core.store_uri import sqlite_file
from gdpipe.track import environment
from gdpipe.track.claim import FINGERPRINT_TAG
from gdpipe.track.compare import Row, load, metric_histories, metric_rows, model_rows, output_rows, table
from gdpipe.track.failures import STORE_ERRORS, store_failure
from gdpipe.track.record import run_params
from gdpipe.track.store import store_lock
from gdpipe.track.where import redact, repo_root, tracking_uri

EXIT_DIFFERS = 1
COMMIT_TAG = "mlflow.source.git.commit"
NOT_FROM_OUTPUTS = ("training_seconds",)  # the wall-clock time training took: no output holds it
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model, version, alias
REBUILD = ["repro", "--force", "--no-run-cache"]
STOP_WAIT_S = 10  # how long a stopped rebuild may take to end before it is killed
LOG_LINES = 15  # of a failed rebuild's output, shown


@dataclass(frozen=True)
class Lineage:
    """What the registry and the run say a model version was made from."""

    name: str
    version: str
    run: Run
    commit: str
    variant: str
    fingerprint: str
    x: float  # evaluate.x: where f is evaluated

    @property
    def what(self) -> str:
        return f"{self.name} version {self.version}"


# --- the lineage ---------------------------------------------------------------------------------


def parse(model: str) -> tuple[str, str, str]:
    """(name, "alias" or "version", which) of MODEL: name@alias or name/version, also as a models:/ URI."""
    text = model.strip().removeprefix("models:/")
    if not text:
        raise InputError(
            "which model? make reproduce MODEL=name@alias or MODEL=name/version, as in MODEL=gdpipe-torch@champion"
        )
    name, at, alias = text.partition("@")
    if at and name and alias and "/" not in alias:
        return name, "alias", alias
    name, slash, number = text.rpartition("/")
    if slash and name and number.isdigit() and int(number) > 0:
        return name, "version", str(int(number))
    raise InputError(
        f"MODEL={model!r} names no model version: write name@alias or name/version, as in gdpipe-torch@champion, "
        "gdpipe-torch@challenger or gdpipe-numpy/3"
    )


def lineage(client: MlflowClient, name: str, kind: str, which: str, where: str) -> Lineage:
    """The version's lineage; InputError when there is no such version, or it has none (registered by hand)."""
    try:
        found = (
            client.get_model_version_by_alias(name, which) if kind == "alias" else client.get_model_version(name, which)
        )
    except MlflowException as err:
        if err.error_code not in NOT_FOUND_CODES:
            raise
        raise _not_found(client, name, f"{kind} {which}", where) from None
    what = f"{name} version {found.version}"
    run = None
    if found.run_id:
        try:
            run = client.get_run(found.run_id)
        except MlflowException as err:
            if err.error_code not in NOT_FOUND_CODES:
                raise
    tags, params = (run.data.tags, run.data.params) if run else ({}, {})
    missing = [key for key in (COMMIT_TAG, FINGERPRINT_TAG, "variant") if not tags.get(key)]
    missing += [f"the param {key}" for key in ("evaluate.x",) if key not in params]
    if run is None or missing:
        why = f"its run {found.run_id} has no {', '.join(missing)}" if run else "no run of it exists"
        raise InputError(
            f"{what} in {where} has no lineage to rebuild it from ({why}): it was not registered by gdpipe's track "
            "stage (by hand, perhaps); rebuild a version that make repro registered"
        )
    return Lineage(
        name,
        str(found.version),
        run,
        tags[COMMIT_TAG],
        tags["variant"],
        tags[FINGERPRINT_TAG],
        float(params["evaluate.x"]),
    )


def _not_found(client: MlflowClient, name: str, wanted: str, where: str) -> InputError:
    """No such model, version or alias, in words that say what the store has instead."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in NOT_FOUND_CODES:
            raise
        names = sorted(each.name for each in client.search_registered_models())
        return InputError(f"{where} has no registered model {name} (it has {', '.join(names) or 'none'})")
    versions = sorted(int(each.version) for each in client.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"{alias} is version {version}" for alias, version in sorted(model.aliases.items()))
    return InputError(
        f"{name} has no {wanted} in {where} (versions: {', '.join(map(str, versions)) or 'none'}; "
        f"{aliases or 'no aliases'})"
    )


def check_commit(root: Path, line: Lineage) -> None:
    """InputError unless the version's commit is in this clone."""
    inside = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=root, capture_output=True, text=True)
    if inside.returncode != 0:
        raise InputError(f"{root} is not a git clone: make reproduce checks {line.what}'s commit out of one")
    found = subprocess.run(["git", "cat-file", "-e", f"{line.commit}^{{commit}}"], cwd=root, capture_output=True)
    if found.returncode != 0:
        if inside.stdout.strip() == "true":
            fetch = "this clone is shallow (git clone --depth, CI's default checkout): git fetch --unshallow"
        else:
            fetch = "git fetch it from the remote that has it (a shallow clone needs git fetch --unshallow)"
        raise InputError(
            f"commit {line.commit[:12]}, which {line.what} was made from, is not in this clone: {fetch}, then run again"
        )


def check_params(worktree: Path, line: Lineage, rebuilt: dict[str, str] | None = None) -> None:
    """InputError when the commit's params.yaml gives other params than the version's run was published with.

    Before the rebuild, with this gdpipe's reading of the params (`rebuilt` None; a params.yaml of another
    gdpipe's format is left to the rebuild); after it, with the params the rebuild's own run logged.
    """
    logged = line.run.data.params
    if rebuilt is None:
        try:
            params = config.load(worktree / "params.yaml")
        except InputError:
            return
        rebuilt = {key: str(value) for key, value in run_params(params, line.variant).items()}
        keys = sorted(rebuilt.keys() & logged.keys())  # a key this gdpipe added or dropped is the rebuild's to judge
    else:
        keys = sorted(rebuilt.keys() | logged.keys())
    changed = [
        f"{key} is {rebuilt.get(key, 'absent')} there, {logged.get(key, 'absent')} in its run"
        for key in keys
        if rebuilt.get(key) != logged.get(key)
    ]
    if changed:
        if line.run.data.tags.get("git.dirty") == "true":
            changed.append("its run was published from a workspace with uncommitted changes, git.dirty")
        raise InputError(
            f"the params.yaml of commit {line.commit[:12]} does not give {line.what}'s fingerprint "
            f"({'; '.join(changed)}): its result was not made from that commit, so it cannot be rebuilt from it"
        )


# --- the rebuild ---------------------------------------------------------------------------------


@contextlib.contextmanager
def worktree(root: Path, commit: str, folder: Path) -> Iterator[Path]:
    """`commit` checked out into folder/<commit>, a git worktree of `root`'s repository; removed afterwards.

    No hooks run: a post-checkout hook (`dvc install` adds one that runs dvc checkout) has no place in a rebuild
    from nothing. Removed with --force twice (changes and a lock alike); `git worktree prune` only if that
    failed, as it forgets every other missing worktree of the user's too.
    """
    path = folder / commit[:12]
    try:
        added = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", "worktree", "add", "--detach", str(path), commit],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if added.returncode != 0:
            raise InputError(f"git could not check commit {commit[:12]} out into {path}: {_last_line(added.stderr)}")
        yield path
    finally:
        with signals_held():  # a stop during the clean-up lands after it
            (path / ".venv").unlink(missing_ok=True)  # the user's venv: never through it
            removed = subprocess.run(
                ["git", "worktree", "remove", "--force", "--force", str(path)], cwd=root, capture_output=True
            )
            if removed.returncode != 0:
                subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)


def start_rebuild(path: Path, scratch: Path, store: str) -> subprocess.Popen:
    """`dvc repro --force --no-run-cache` in the worktree `path` (`scratch`/<commit>), started: with this venv, a
    DVC cache, site cache and TMPDIR in `scratch`, the throwaway MLflow store `store`, none of the caller's DVC or
    MLflow settings, in a process group of its own (stopped whole by `stop`), its output in scratch/rebuild.log."""
    (path / ".venv").symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)  # stages/python runs it
    dvc = Path(sys.executable).with_name("dvc")  # this venv's, a dependency of gdpipe
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DVC_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_"))
        and key not in ("PYTHONPATH", "GDPIPE_PYTHON")
    }
    env |= {"MLFLOW_TRACKING_URI": store, "DVC_SITE_CACHE_DIR": str(scratch / "site"), "DVC_NO_ANALYTICS": "1"}
    (scratch / "tmp").mkdir()
    env["TMPDIR"] = str(scratch / "tmp")  # what the stages leave in a temporary folder goes with `scratch` too
    # Its own empty DVC cache, whatever the project's, the user's or the system's DVC config say: a local config
    # wins over them all. Written as `dvc config --local cache.dir` would write it, a second sooner; a relative
    # path is read from .dvc/, so `scratch`'s characters need no quoting.
    assert path.parent == scratch, path
    (path / ".dvc" / "config.local").write_text("[cache]\n    dir = ../../cache\n")
    with (scratch / "rebuild.log").open("w") as log:
        return subprocess.Popen(
            [dvc, *REBUILD], cwd=path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    """End the rebuild and every stage it started: SIGTERM, then SIGKILL after STOP_WAIT_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def prepare_store(uri: str) -> None:
    """Make the throwaway store's tables now, while the first stages run, rather than in the track stage.

    Under the lock that the track stage takes too (store.store_lock), so that it waits for them to be made."""
    with store_lock(uri):
        MlflowClient(uri).search_experiments()


def verdict(
    line: Lineage, rows: list[Row], outputs: int, metrics: int, environment_notes: list[str]
) -> tuple[str, int]:
    """The last lines and the exit code: identical (0), or each difference and the environment's (1)."""
    differ = [row for row in rows if not row.same]
    if not differ:
        return f"reproduced: {line.what} is identical ({outputs} outputs, model, {metrics} metrics)", 0
    lines = [f"not reproduced: {line.what} differs from its rebuild in {len(differ)} of {len(rows)} comparisons:"]
    lines += [f"  {row.what}: {row.recorded} recorded, {row.rebuilt} rebuilt" for row in differ]
    if line.run.data.tags.get("git.dirty") == "true":
        lines.append(
            f"  its run was published from a workspace with uncommitted changes (git.dirty): commit "
            f"{line.commit[:12]} does not hold everything that made it"
        )
    same = (
        "the same as recorded at training (Python, NumPy, PyTorch, DVC, MLflow, platform and BLAS kernel): "
        "the difference is not the software's"
    )
    lines.append(f"  environment: {'; '.join(environment_notes) or same}")
    return "\n".join(lines), EXIT_DIFFERS


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


# --- the command ---------------------------------------------------------------------------------


def reproduce(model: str, root: Path, uri: str, scratch: Path) -> int:
    """Rebuild the version MODEL names from its lineage in `scratch` (a folder of its own), print the table and
    the verdict, and return the exit code."""
    name, kind, which = parse(model)
    database = sqlite_file(uri)
    if database is not None and not database.exists():
        raise InputError(
            f"no MLflow store at {database}: nothing is registered there (make repro publishes to it; "
            "MLFLOW_TRACKING_URI names another store)"
        )
    client = MlflowClient(uri)
    try:
        line = lineage(client, name, kind, which, redact(uri))
    except STORE_ERRORS as err:
        raise store_failure(err, uri) from None
    check_commit(root, line)
    alias = f" ({which})" if kind == "alias" else ""
    print(f"{line.what}{alias}: run {line.run.info.run_id}, {line.variant}, commit {line.commit[:12]}", flush=True)
    store = f"sqlite:///{scratch / 'mlruns' / 'mlflow.db'}"  # the rebuild's throwaway store
    keys = sorted(set(line.run.data.metrics) - set(NOT_FROM_OUTPUTS))
    with worktree(root, line.commit, scratch) as path:
        check_params(path, line)
        lock = YAML(typ="safe").load((path / "dvc.lock").read_text())  # the commit's, before the rebuild rewrites it
        print(f"rebuilding it from nothing in a temporary worktree ({' '.join(['dvc', *REBUILD])})", flush=True)
        started = time.monotonic()
        process = start_rebuild(path, scratch, store)
        try:
            # While the stages run: the throwaway store's tables, the registered model and the run's metrics.
            prepare_store(store)
            try:
                recorded = load(f"models:/{line.name}/{line.version}", uri, scratch / "registered", line.x)
                recorded_metrics = metric_histories(client, line.run, keys)
            except STORE_ERRORS as err:
                raise store_failure(err, uri, f"reading {line.what}") from None
            code = process.wait()
        except BaseException:
            stop(process)
            raise
        seconds = time.monotonic() - started
        if code != 0:
            log = (scratch / "rebuild.log").read_text(errors="replace").rstrip().splitlines()[-LOG_LINES:]
            print("\n".join(log), file=sys.stderr)
            print(f"not reproduced: the rebuild of commit {line.commit[:12]} failed (dvc repro exited {code})")
            return EXIT_DIFFERS
        outputs = output_rows(lock, path)
        rebuilt_client = MlflowClient(store)
        experiments = [each.experiment_id for each in rebuilt_client.search_experiments()]
        found = f"tags.variant = '{line.variant}' and attributes.status = 'FINISHED'"
        runs = rebuilt_client.search_runs(experiments, found)
        if len(runs) != 1:
            print(f"not reproduced: the rebuild published {len(runs)} runs of {line.variant}, not one")
            return EXIT_DIFFERS
        (run,) = runs
        check_params(path, line, run.data.params)
        rebuilt = load(f"runs:/{run.info.run_id}/model", store, scratch / "rebuilt", line.x)
        fingerprint = run.data.tags.get(FINGERPRINT_TAG, "none")
        rows = [
            *outputs,
            *model_rows(recorded, rebuilt, line.x),
            Row("fingerprint", line.fingerprint[:12], fingerprint[:12], fingerprint == line.fingerprint),
            *metric_rows(recorded_metrics, metric_histories(rebuilt_client, run, keys)),
        ]
    notes = environment.differences(environment.recorded(line.run.data.tags), environment.environment())
    print(f"rebuilt in {seconds:.1f} s\n\n{table(rows)}\n")
    if notes and all(row.same for row in rows):
        print(f"environment: {'; '.join(notes)}")
    text, code = verdict(line, rows, len(outputs), len(keys), notes)
    print(text)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="name@alias or name/version, as in gdpipe-torch@champion or gdpipe-numpy/3")
    args = parser.parse_args(argv)
    root = repo_root()
    uri = tracking_uri(root)
    scratch = Path(tempfile.mkdtemp(prefix="gdpipe-reproduce-"))
    try:
        return reproduce(args.model, root, uri, scratch)
    except (KeyboardInterrupt, Terminated) as stopped:
        stopped.add_note("the rebuild was stopped and its temporary worktree removed")
        raise
    finally:
        with signals_held():
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run_command(main)
