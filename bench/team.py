"""team: make server's PostgreSQL-backed server. Its metric logging as in publish.py, and each of 8 track
stages publishing different results at once / 1 track stage alone, as a rate per publisher (t1 / t8)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

import publish
from common import SRC, Row, say, summarize
from support import MAKE_ENV, REPO, TRACK_ARGS, build_workspace, child_env, free_port, with_overrides, write_yaml

GOALS = {"team server 10k epochs x 2": ("<=", 1.2)}


def run(quick: bool, work: Path) -> dict:
    """The metric logging's ratios (log_batch) and the publishers' rates (publishers)."""
    epochs, repeats = (2_000, 2) if quick else (10_000, 3)
    os.environ.update(MAKE_ENV)
    work.chmod(0o711)  # PostgreSQL runs as the user postgres when we are root: it must reach its folder
    port = free_port()
    settings = [f"SERVER_DIR={work / 'team-server'}", f"SERVER_PORT={port}"]
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]
    subprocess.run([*make, "server", *settings], cwd=REPO, env=child_env(), check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        records = publish.records(epochs, work)
        say(f"team: {epochs} epochs x {len(records)} variants to {url}, {repeats} repeats")
        logging = publish.ratios(url, None, records, epochs, repeats)
        workspaces = [build_workspace(work / f"team-ws-{index}", {"train.epochs": 100 + index}) for index in range(8)]
        track = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
        env = child_env(PYTHONPATH=str(SRC), MLFLOW_TRACKING_URI=url)
        one, eight = [], []
        for repeat in range(repeats):
            for workspace in workspaces:  # a new experiment each repeat: every publish makes new runs
                document = YAML(typ="safe").load((workspace / "params.yaml").read_text())
                write_yaml(workspace / "params.yaml", with_overrides(document, {"track.experiment": f"team-{repeat}"}))
            say(f"team: 1 publisher, then 8 at once (repeat {repeat + 1})")
            start = time.perf_counter()
            subprocess.run(track, cwd=workspaces[0], env=env, check=True, capture_output=True)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            running = [subprocess.Popen(track, cwd=each, env=env, stdout=subprocess.DEVNULL) for each in workspaces[1:]]
            running.append(subprocess.Popen(track, cwd=workspaces[0], env=env, stdout=subprocess.DEVNULL))
            assert [process.wait() for process in running] == [0] * 8
            eight.append(time.perf_counter() - start)
    finally:
        subprocess.run([*make, "server-stop", *settings], cwd=REPO, env=child_env(), capture_output=True)
    # Per publisher: one result in `eight` seconds beside 7 others, against one in `one` seconds alone
    # (1 would be no slowdown at all; 8 of them then publish 8 x this ratio as many results per second).
    throughput = [alone / together for alone, together in zip(one, eight, strict=True)]
    return {"log_batch": logging, "publishers": summarize(throughput) | {"one_seconds": one, "eight_seconds": eight}}


def rows(result: dict) -> list[Row]:
    """The metric logging, then the rate of each of 8 publishers."""
    label = f"team server {result['log_batch']['epochs'] // 1000}k epochs x 2"
    return [
        (label, result["log_batch"], GOALS.get(label)),
        ("team, 8 publishers: rate of each", result["publishers"], None),
    ]


def notes(result: dict) -> list[str]:
    """The publishers' seconds, and what they make of the rate."""
    team = result["publishers"]
    alone, together = statistics.median(team["one_seconds"]), statistics.median(team["eight_seconds"])
    return [
        f"team server: 1 publisher {alone:.1f} s, 8 at once {together:.1f} s "
        f"({8 * alone / together:.1f} x the results per second of one)"
    ]
