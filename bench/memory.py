"""memory: the peak RSS of each train stage, in its own process, at N = 5e7 / the bytes of x and y."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import SRC, Row, say, write_params
from support import REPO, child_env

GOALS = {"memory numpy N=5e7": ("<=", 1.6), "memory torch N=5e7": ("<=", 3.0)}


def run(quick: bool, work: Path) -> dict:
    """The data set's bytes, and each variant's peak RSS and its ratio to them."""
    n = 5 * 10**6 if quick else 5 * 10**7
    folder = work / "memory"
    folder.mkdir()
    params = write_params(
        folder / "params.yaml", **{"data.n_samples": n, "data.x_layout": "uniform", "train.lr": 0.1, "train.epochs": 3}
    )
    say(f"memory: generate N={n:.0e}")
    subprocess.run(
        [sys.executable, str(REPO / "stages/generate.py"), "--params", str(params), "--out", "dataset.npy"],
        cwd=folder,
        env=child_env(PYTHONPATH=str(SRC)),
        check=True,
    )
    data_bytes = 2 * 4 * n  # x and y, float32
    out = {"n": n, "data_bytes": data_bytes}
    for variant in ("numpy", "torch"):
        say(f"memory: train {variant}")
        rss = peak_rss(
            [
                sys.executable,
                str(REPO / "stages/train.py"),
                "--variant",
                variant,
                "--params",
                str(params),
                "--data",
                "dataset.npy",
                "--history",
                f"{variant}.csv",
                "--model",
                f"{variant}.json",
            ],
            folder,
        )
        out[variant] = {"peak_rss_bytes": rss, "ratio": rss / data_bytes}
    shutil.rmtree(folder)
    return out


def peak_rss(command: list[str], cwd: Path) -> int:
    """Run `command` and return its peak resident set size in bytes (Linux: ru_maxrss in KiB)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=child_env(PYTHONPATH=str(SRC)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()}")
    return usage.ru_maxrss * 1024


def rows(result: dict) -> list[Row]:
    """One row per variant: a single measurement, so median, min and max are the same."""
    table = []
    for variant in ("numpy", "torch"):
        label = f"memory {variant} N={result['n']:.0e}".replace("e+0", "e")
        ratio = result[variant]["ratio"]
        table.append((label, {"median": ratio, "min": ratio, "max": ratio}, GOALS.get(label)))
    return table
