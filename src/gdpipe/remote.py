"""make push and make pull: DVC's push and pull of the default remote, run-cache included, each ending in
one line that names the remote and what happened.

    python -m gdpipe.remote push    # dvc push --run-cache, also the outputs the run-cache records
    python -m gdpipe.remote pull    # dvc fetch --run-cache, then dvc checkout

DVC is run through its command line (`python -m dvc`), its output kept; a failure becomes one line
naming the remote and what to do, exit 2. A pull changes the workspace only once every file has
arrived and matches its hash (DVC's `verify` on the remote, then each cached copy here), and `dvc
checkout` without --force never overwrites an output that was changed here. The partial files an
interrupted or failed transfer leaves (DVC renames a copy into place only once it is whole) are
removed then, or by the next push or pull when another transfer held them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ruamel.yaml import YAML

from gdpipe.core.command import InputError, run_command

DOCS = "docs/remote.md"
# DVC's warning, exit code 0, when files of the result are in no cache it can reach.
DVC_FILES_MISSING_WARNING = "Some of the cache files do not exist neither locally nor on remote"

# What DVC's error output says -> what it means and what to do; {name} is the remote's name.
CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `dvc remote modify --local {name} credentialpath FILE`"
PROBLEMS = (
    (
        ("NoSuchBucket", "The specified bucket does not exist"),
        "no such bucket: create it, or fix the url with `dvc remote modify --local {name} url s3://BUCKET/PATH`",
    ),
    (("Unable to locate credentials", "NoCredentialsError"), "no credentials found: set " + CREDENTIALS),
    (
        ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "ExpiredToken"),
        "the credentials were refused ({found}): check " + CREDENTIALS,
    ),
    (
        ("Could not connect to the endpoint URL", "Cannot connect to host", "Connect timeout"),
        "cannot connect to {endpoint}: check the network, or the endpoint with "
        "`dvc remote modify --local {name} endpointurl URL`",
    ),
)

# dvc_objects' name for a file it is copying (tmp_fname): renamed into place once whole, left as it is when
# the copy stops half-way (Ctrl-C, a full disk). gdpipe's own temporary files have more dots in their names.
PARTIAL = re.compile(r"\.[A-Za-z0-9_-]{22}\.tmp")
LOCK = ".gdpipe-transfers.lock"

NOT_HERE = "some of this result's files are in no cache here: make them (make repro) or get them (make pull) first"
NOT_THERE = (
    "some of this result's files are not there: push them from the clone that made them (make push), or make them "
    "here (make repro); the workspace was left as it was"
)


def default_remote() -> tuple[str, str, bool]:
    """The default remote's name, URL (a local one as an absolute path) and whether DVC verifies what it
    fetches from there (its `verify` setting), from `dvc config --list`."""
    listed = _dvc("config", "--list")
    if listed.returncode != 0:
        raise InputError(f"dvc config --list failed: {_first_error(listed)}")
    # One key=value per line, from the system's config to this clone's .dvc/config.local: the last one holds.
    settings = dict(line.partition("=")[::2] for line in listed.stdout.splitlines() if "=" in line)
    name = settings.get("core.remote")
    if not name:
        raise InputError(
            "no DVC remote is configured as the default: add one with `dvc remote add --local -d NAME URL`, "
            f"or choose one with `dvc remote default --local NAME` ({DOCS})"
        )
    url = settings.get(f"remote.{name}.url")
    if not url:
        raise InputError(
            f"the default DVC remote '{name}' is not defined: add it with `dvc remote add --local {name} URL`"
        )
    return name, url, settings.get(f"remote.{name}.verify", "").strip().lower() == "true"


def where(name: str, url: str) -> str:
    """How messages name a remote: its name and URL, without a password the URL may hold (user:password@host)."""
    return f"remote '{name}' ({_without_password(url)})"


def _without_password(text: str) -> str:
    return re.sub(r"(://[^/@\s:]*):[^/@\s]*@", r"\1@", text)


def push(name: str, url: str) -> str:
    """dvc push --run-cache, with every output the run-cache records; DVC's summary, or InputError."""
    remote = where(name, url)
    if not _is_local(url):
        with _naming_run_cache_outputs():
            return _summary(_run(name, remote, "push", "--run-cache", missing=NOT_HERE))
    if not Path(url).parent.is_dir():
        raise InputError(
            f"{remote}: {Path(url).parent} does not exist (not mounted?): mount it, or point the remote elsewhere "
            f"with `dvc remote modify --local {name} url PATH`"
        )
    # dvc push --run-cache sends the run records, not their outputs: dvc repro --pull would rerun those stages.
    with _transfer(Path(url) / LOCK, [Path(url) / "**"], f"in {remote}") as removed, _naming_run_cache_outputs():
        return _summary(_run(name, remote, "push", "--run-cache", missing=NOT_HERE)) + removed.summary()


@contextlib.contextmanager
def _naming_run_cache_outputs() -> Iterator[None]:
    """While open, a .dvc file in a temporary folder here names each output that DVC's run-cache records and
    its cache holds (results no dvc.lock names, and the metrics.json DVC caches for the run-cache only), so
    that `dvc push` sends them too. DVC ignores a git-ignored .dvc file, so the folder is not one."""
    cache = _cache_dir()
    outs = {}
    for record in sorted(cache.glob("runs/*/*/*")):
        for out in YAML(typ="safe").load(record.read_text()).get("outs", []):
            md5 = out.get("md5", "")
            if out.get("hash") == "md5" and (cache / "files" / "md5" / md5[:2] / md5[2:]).is_file():
                outs[md5] = {key: out[key] for key in ("md5", "size", "nfiles", "hash") if key in out} | {"path": md5}
    if not outs:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix=".gdpipe-push-", dir="."))
    try:
        (folder / "run-cache.dvc").write_text(json.dumps({"outs": list(outs.values())}, indent=1) + "\n")
        yield
    finally:
        shutil.rmtree(folder)


def pull(name: str, url: str, verify: bool) -> str:
    """dvc fetch --run-cache, then dvc checkout if every file arrived and matches its hash; DVC's summaries,
    or InputError. `verify`: the remote's DVC setting of that name, which must be on."""
    remote = where(name, url)
    if not verify:
        # Without it DVC trusts what it fetches, and so would dvc repro --pull.
        raise InputError(
            f"{remote}: DVC does not check what it fetches from it against its hash: turn that on with "
            f"`.venv/bin/dvc remote modify --local {name} verify true` ({DOCS}); the workspace was left as it was"
        )
    if _is_local(url) and not Path(url).is_dir():
        raise InputError(
            f"{remote}: no such folder: push there first (make push), or point the remote at your storage with "
            f"`dvc remote modify --local {name} url PATH`; the workspace was left as it was"
        )
    cache = _cache_dir()
    outputs = _locked_outputs()
    # DVC writes a file it fetches beside its place in the cache, one it checks out beside the output.
    folders = [cache / "**", *sorted({Path(path).parent for path in outputs.values()})]
    with _transfer(Path(".dvc", "tmp", LOCK), folders, "in this clone") as removed:
        fetched = _summary(_run(name, remote, "fetch", "--run-cache", missing=NOT_THERE))
        _check_fetched(remote, url, cache, outputs)
        changed = _summary(_run(name, remote, "checkout", missing=NOT_THERE), count=True)  # a line per output
        return f"{fetched}; {changed}" + removed.summary()


def _locked_outputs() -> dict[str, str]:
    """md5 -> path of each file output dvc.lock names (those DVC does not cache too)."""
    lock = YAML(typ="safe").load(Path("dvc.lock").read_text()) if Path("dvc.lock").is_file() else None
    stages = (lock or {}).get("stages", {}).values()
    return {out["md5"]: out["path"] for stage in stages for out in stage.get("outs", []) if "md5" in out}


def _check_fetched(remote: str, url: str, cache: Path, outputs: dict[str, str]) -> None:
    """Every output DVC will check out is in the cache here with the bytes of its hash, or InputError.

    DVC's verify drops a fetched file that does not match its hash, says so only in its debug log and
    counts it as fetched (DVC 3.67); it trusts a file already in the cache here, once made read-only.
    """
    done = _dvc("data", "status", "--json")
    if done.returncode != 0:
        raise InputError(f"{remote}: dvc data status failed: {_first_error(done)}")
    dropped = json.loads(done.stdout or "{}").get("not_in_cache", [])
    if dropped:
        objects = [
            f"{url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}" for md5, path in outputs.items() if path in dropped
        ]
        raise InputError(
            f"{remote}: {', '.join(dropped)}: the copy there does not match its hash: delete it there "
            f"({_without_password(', '.join(objects))}) and push it again from the clone that made it (make push), "
            "or make it here (make repro); the workspace was left as it was"
        )
    for md5, path in outputs.items():
        copy = cache / "files" / "md5" / md5[:2] / md5[2:]
        if copy.is_file():
            with copy.open("rb") as file:
                if hashlib.file_digest(file, "md5").hexdigest() != md5:
                    raise InputError(
                        f"{path}: the copy in DVC's cache here ({copy}) does not match its hash: delete it and "
                        "run make pull again; the workspace was left as it was"
                    )


class _Removed(list):
    """The notes of what _transfer removed, for the command's one line."""

    def summary(self) -> str:
        return "".join(f"; {note}" for note in self)


@contextlib.contextmanager
def _transfer(lock_path: Path, folders: Sequence[Path], place: str) -> Iterator[_Removed]:
    """While open, one of gdpipe's transfers into `folders` (a shared lock on `lock_path`; `folder/**`: with
    its subfolders). Before it, and after it failed or was interrupted (DVC has exited then), the partial
    files DVC left in `folders` are removed, if no other of gdpipe's transfers holds the lock: a partial
    file may be one it is writing."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    removed = _Removed()
    with lock_path.open("a") as lock:
        _remove_partial_files(lock, folders, place, removed)
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield removed
        except InputError as err:
            _remove_partial_files(lock, folders, place, removed)
            raise InputError(f"{err}{removed.summary()}") from None
        except BaseException as err:  # Ctrl-C, kill: the notes become part of the command's one line
            _remove_partial_files(lock, folders, place, removed)
            for note in removed:
                err.add_note(note)
            raise


def _remove_partial_files(lock, folders: Sequence[Path], place: str, removed: _Removed) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another transfer is running: the next push or pull removes what is left
    partial = [path for folder in folders for path in _partial_files(folder)]
    for path in partial:
        path.unlink(missing_ok=True)
    if partial:
        removed.append(
            f"removed {len(partial)} partial file{'s' * (len(partial) > 1)} {place} that an interrupted "
            "or failed transfer left"
        )


def _partial_files(folder: Path) -> list[Path]:
    """DVC's partial files in `folder` (`folder/**`: also in its subfolders)."""
    found = folder.parent.glob("**/.*.tmp") if folder.name == "**" else folder.glob(".*.tmp")
    return [path for path in found if PARTIAL.fullmatch(path.name)]


def _cache_dir() -> Path:
    listed = _dvc("cache", "dir")
    if listed.returncode != 0:
        raise InputError(f"dvc cache dir failed: {_first_error(listed)}")
    return Path(listed.stdout.strip())


def _run(name: str, where: str, *args: str, missing: str) -> str:
    """Run dvc with `args`; its output, or InputError saying what went wrong (`missing`: files were missing)."""
    done = _dvc(*args)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise InputError(f"{where}: {_without_password(_explain(name, done))}")
    if DVC_FILES_MISSING_WARNING in output:
        raise InputError(f"{where}: {missing}")
    return done.stdout


def _explain(name: str, done: subprocess.CompletedProcess) -> str:
    """What a failed DVC command's output means for the user, in one line."""
    output = done.stdout + done.stderr
    for signs, meaning in PROBLEMS:
        found = next((sign for sign in signs if sign in output), None)
        if found:
            endpoint = re.search(r"https?://[^/\"'\s]+", output)
            return meaning.format(name=name, found=found, endpoint=endpoint[0] if endpoint else "the endpoint")
    command = " ".join(done.args[3:])
    return f"dvc {command} failed: {_first_error(done)} (run `.venv/bin/dvc {command} -v` for DVC's own output)"


def _first_error(done: subprocess.CompletedProcess) -> str:
    """DVC's first ERROR message, its continuation lines joined into one."""
    lines = done.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ERROR: ")), None)
    if start is None:
        return f"exit code {done.returncode}"
    message = [lines[start].removeprefix("ERROR: ")]
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(("ERROR: ", "WARNING: ", "Having any troubles?")):
            break
        message.append(line.strip())
    return " ".join(message)


def _summary(stdout: str, count: bool = False) -> str:
    """DVC's last line (10 files pushed), or with `count` how many lines it printed (dvc checkout: one per output)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if count:
        return f"{len(lines)} outputs checked out" if lines else "the workspace was up to date"
    return lines[-1].rstrip(".") if lines else "done"


def _is_local(url: str) -> bool:
    return "://" not in url


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("push", "pull"), help="push: to the default remote; pull: from it")
    args = parser.parse_args(argv)
    name, url, verify = default_remote()
    summary = push(name, url) if args.action == "push" else pull(name, url, verify)
    print(f"{args.action}: {where(name, url)}: {summary}")


if __name__ == "__main__":
    run_command(main)
