"""tune: make tune's trials per minute with 2 workers (clones) sharing one study on make server's PostgreSQL / with
1 worker alone, the same study size, in the same run."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from common import Row, say, summarize
from remotes import clone, git
from support import (
    MAKE_ENV,
    REPO,
    child_env,
    copy_repo,
    free_port,
    load_default_params,
    with_overrides,
    write_yaml,
)


def run(quick: bool, work: Path) -> dict:
    """Seconds for one study of `trials` trials by 1 worker, then a new one by 2, repeat by repeat."""
    trials, repeats = (4, 1) if quick else (8, 2)
    os.environ.update(MAKE_ENV)
    work.chmod(0o711)  # PostgreSQL runs as the user postgres when we are root: it must reach its folder
    settings = [f"SERVER_DIR={work / 'tune-server'}", f"SERVER_PORT={free_port()}"]
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]
    started = subprocess.run([*make, "server", *settings], cwd=REPO, env=child_env(), check=True, capture_output=True)
    (line,) = [line for line in started.stdout.decode().splitlines() if "GDPIPE_TUNE_STORAGE=" in line]
    storage = shlex.split(line.removeprefix("export "))[0].split("=", 1)[1]
    url = next(line for line in started.stdout.decode().splitlines() if "MLFLOW_TRACKING_URI=" in line).split("=", 1)[1]
    try:
        source = copy_repo(work / "tune-source")
        write_yaml(source / "params.yaml", with_overrides(load_default_params(), {"tune.trials": trials}))
        git(source, "-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-qam", "bench study")
        machines = [clone(source, work / f"tune-machine-{index}") for index in range(3)]
        one, two = [], []
        for repeat in range(repeats):
            for workers, seconds in ((machines[:1], one), (machines[1:], two)):
                study = f"bench-{uuid.uuid4().hex[:8]}"
                env = child_env(GDPIPE_TUNE_STORAGE=storage, MLFLOW_TRACKING_URI=url)
                for repo in workers:
                    document = with_overrides(load_default_params(), {"tune.trials": trials, "tune.study": study})
                    write_yaml(repo / "params.yaml", document)
                say(f"tune: {trials} trials by {len(workers)} worker(s) (repeat {repeat + 1})")
                start = time.perf_counter()
                running = [
                    subprocess.Popen([*make, "tune"], cwd=repo, env=env, stdout=subprocess.DEVNULL) for repo in workers
                ]
                assert [process.wait() for process in running] == [0] * len(workers)
                seconds.append(time.perf_counter() - start)
    finally:
        subprocess.run([*make, "server-stop", *settings], cwd=REPO, env=child_env(), capture_output=True)
    ratios = [alone / together for alone, together in zip(one, two, strict=True)]
    return {"trials": trials, "two_over_one": summarize(ratios) | {"one_seconds": one, "two_seconds": two}}


def rows(result: dict) -> list[Row]:
    """Trials per minute of 2 workers / of 1."""
    return [(f"tune, {result['trials']} trials: 2 workers / 1", result["two_over_one"], None)]


def notes(result: dict) -> list[str]:
    trials, runs = result["trials"], result["two_over_one"]
    one, two = min(runs["one_seconds"]), min(runs["two_seconds"])
    return [f"tune: {trials} trials, 1 worker {60 * trials / one:.1f}/min, 2 workers {60 * trials / two:.1f}/min"]
