"""make push and make pull: DVC's push and pull of the default remote, run-cache included, each ending in
one line that names the remote and what happened.

    python -m gdpipe.remote push    # dvc push --run-cache, also the outputs the run-cache records
    python -m gdpipe.remote pull    # dvc fetch --run-cache, then dvc checkout

DVC is run through its command line (`python -m dvc`), its output kept; a failure becomes one line
naming the remote and what to do, exit 2. A pull changes the workspace only once every file has
arrived, and `dvc checkout` without --force never overwrites an output that was changed here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ruamel.yaml import YAML

from gdpipe.core.command import InputError, run_command

DOCS = "docs/remote.md"
# DVC's warning, exit code 0, when files of the result are in no cache it can reach.
MISSING = "Some of the cache files do not exist neither locally nor on remote"

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

NOT_HERE = "some of this result's files are in no cache here: make them (make repro) or get them (make pull) first"
NOT_THERE = (
    "some of this result's files are not there: push them from the clone that made them (make push), or make them "
    "here (make repro); the workspace was left as it was"
)


def default_remote() -> tuple[str, str]:
    """The default remote's name and URL (a local one as an absolute path), from `dvc config --list`."""
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
    return name, url


def push(name: str, url: str) -> str:
    """dvc push --run-cache, with every output the run-cache records; DVC's summary, or InputError."""
    where = f"remote '{name}' ({url})"
    if _is_local(url) and not Path(url).parent.is_dir():
        raise InputError(
            f"{where}: {Path(url).parent} does not exist (not mounted?): mount it, or point the remote elsewhere "
            f"with `dvc remote modify --local {name} url PATH`"
        )
    # dvc push --run-cache sends the run records, not their outputs: dvc repro --pull would rerun those stages.
    with _naming_run_cache_outputs():
        return _summary(_run(name, where, "push", "--run-cache", missing=NOT_HERE))


@contextlib.contextmanager
def _naming_run_cache_outputs() -> Iterator[None]:
    """While open, a .dvc file in a temporary folder here names each output that DVC's run-cache records and
    its cache holds (results no dvc.lock names, and the metrics.json DVC caches for the run-cache only), so
    that `dvc push` sends them too. DVC ignores a git-ignored .dvc file, so the folder is not one."""
    listed = _dvc("cache", "dir")
    if listed.returncode != 0:
        raise InputError(f"dvc cache dir failed: {_first_error(listed)}")
    cache = Path(listed.stdout.strip())
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


def pull(name: str, url: str) -> str:
    """dvc fetch --run-cache, then dvc checkout if every file arrived; DVC's summaries, or InputError."""
    where = f"remote '{name}' ({url})"
    if _is_local(url) and not Path(url).is_dir():
        raise InputError(
            f"{where}: no such folder: push there first (make push), or point the remote at your storage with "
            f"`dvc remote modify --local {name} url PATH`; the workspace was left as it was"
        )
    fetched = _summary(_run(name, where, "fetch", "--run-cache", missing=NOT_THERE))
    changed = _summary(_run(name, where, "checkout", missing=NOT_THERE), count=True)  # a line per output it wrote
    return f"{fetched}; {changed}"


def _run(name: str, where: str, *args: str, missing: str) -> str:
    """Run dvc with `args`; its output, or InputError saying what went wrong (`missing`: files were missing)."""
    done = _dvc(*args)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise InputError(f"{where}: {_explain(name, done)}")
    if MISSING in output:
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
    name, url = default_remote()
    summary = (push if args.action == "push" else pull)(name, url)
    print(f"{args.action}: remote '{name}' ({url}): {summary}")


if __name__ == "__main__":
    run_command(main)
