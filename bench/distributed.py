"""distributed: the torch variant's train stage at N = 10^7 on 2 processes (torchrun, one thread each) / on 1 process
(one thread): epochs per second, and each rank's peak memory against the single process's. The single process with
torch's default threads (one per core) is measured too, for the notes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import SRC, Row, say, summarize, write_params
from support import REPO, child_env, sitecustomize

# Two processes on two cores: perfect would be 2x the epochs per second of one process on one core (efficiency 1).
GOALS = {"distributed 2 proc / 1, epochs/s": (">=", 1.5)}
# (name, processes, OMP_NUM_THREADS): the arms, taken in turn in every repeat. None: as the stage sets it, which
# with 2 processes on 2 cores is 1 thread each, and with 1 process torch's default, a thread per core.
ARMS = (("1 process, 1 thread", 1, "1"), ("2 processes, 1 thread each", 2, None), ("1 process, 2 threads", 1, None))
TRAIN = "--variant torch --params params.yaml --data dataset.npy --history torch.csv --model torch.json".split()


def run(quick: bool, work: Path) -> dict:
    """Interleaved repeats of the train stage with train.torch.processes 1 and 2 on one data set: the training's
    seconds (history/torch.timing.json: the epochs alone, after start-up), the stage's peak RSS (1 process) and
    each rank's (tests/programs/rank_hook.py: VmHWM, and the RSS just before it opened the data set)."""
    n = 10**6 if quick else 10**7
    epochs, repeats = (20, 2) if quick else (50, 5)
    folder = work / "distributed"
    folder.mkdir()
    overrides = {"data.n_samples": n, "data.x_layout": "uniform", "train.lr": 1.0, "train.epochs": epochs}
    write_params(folder / "params.yaml", **overrides)
    subprocess.run(
        [sys.executable, str(REPO / "stages/generate.py"), "--params", "params.yaml", "--out", "dataset.npy"],
        cwd=folder,
        env=child_env(PYTHONPATH=str(SRC)),
        check=True,
    )
    hook = sitecustomize(folder / "hook", "rank_hook").parent
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in ARMS}
    single_peak, ranks = [], []
    for repeat in range(repeats):
        for name, processes, threads in ARMS:
            say(f"distributed: N={n:.0e}, {name}, repeat {repeat + 1} of {repeats}")
            write_params(folder / "params.yaml", **overrides, **{"train.torch.processes": processes})
            report = folder / f"ranks-{repeat}-{name.replace(' ', '-').replace(',', '')}"
            report.mkdir()
            env = child_env(PYTHONPATH=f"{hook}{os.pathsep}{SRC}", GDPIPE_TEST_RANKS=str(report))
            env.pop("OMP_NUM_THREADS", None)
            env |= {"OMP_NUM_THREADS": threads} if threads else {}
            process = subprocess.Popen(
                [sys.executable, str(REPO / "stages/train.py"), *TRAIN], cwd=folder, env=env, stderr=subprocess.PIPE
            )
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise RuntimeError(f"train stage, {processes} processes: {process.stderr.read().decode()}")
            timing = json.loads((folder / "torch.timing.json").read_text())
            assert timing["world_size"] == processes
            seconds[name].append((timing["finished_ms"] - timing["started_ms"]) / 1000)
            if name == ARMS[0][0]:
                single_peak.append(usage.ru_maxrss * 1024)
            elif processes == 2:
                ranks.append([json.loads((report / f"rank-{rank}.json").read_text()) for rank in (0, 1)])
    one, two = (seconds[name] for name, _, _ in ARMS[:2])
    speedups = [alone / together for alone, together in zip(one, two, strict=True)]
    memory = [max(rank["peak"] for rank in pair) / single for pair, single in zip(ranks, single_peak, strict=True)]
    data_bytes = 8 * n
    grown = [rank["peak"] - rank["rss_before_data"] for pair in ranks for rank in pair]
    return {
        "n": n,
        "epochs": epochs,
        "data_bytes": data_bytes,
        "speedup": summarize(speedups),
        "memory": summarize(memory),
        "seconds": seconds,
        "single_peak_bytes": single_peak,
        "rank_peak_bytes": [[rank["peak"] for rank in pair] for pair in ranks],
        "rank_growth_over_data": [round(g / data_bytes, 3) for g in grown],
    }


def rows(result: dict) -> list[Row]:
    """Epochs per second (2 processes / 1 process on 1 core) and peak RSS (the larger rank / the single process)."""
    return [
        ("distributed 2 proc / 1, epochs/s", result["speedup"], GOALS["distributed 2 proc / 1, epochs/s"]),
        ("distributed rank / 1 proc, peak RSS", result["memory"], None),
    ]


def notes(result: dict) -> list[str]:
    """Milliseconds per epoch of each arm, the parallel efficiency, and each rank's growth against the data set."""
    per_epoch = "; ".join(f"{arm} {min(s) / result['epochs'] * 1000:.0f}" for arm, s in result["seconds"].items())
    return [
        f"distributed, N={result['n']:.0e}, ms per epoch (best of each): {per_epoch}; "
        f"parallel efficiency {result['speedup']['median'] / 2:.2f} (speedup / 2 cores); "
        f"peak RSS {min(result['single_peak_bytes']) / 1e6:.0f} MB on 1 process, "
        f"{min(min(pair) for pair in result['rank_peak_bytes']) / 1e6:.0f} to "
        f"{max(max(pair) for pair in result['rank_peak_bytes']) / 1e6:.0f} MB per rank; each rank grew by "
        f"{min(result['rank_growth_over_data']):.2f} to {max(result['rank_growth_over_data']):.2f} x the data set "
        f"({result['data_bytes'] / 1e6:.0f} MB) once it opened it"
    ]
