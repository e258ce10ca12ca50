"""make bench: gdpipe held against the hardware floor and against the plain tutorial script.

Every figure is a ratio of two measurements taken in the same process or the same run,
interleaved repeat by repeat, because these machines are shared and noisy: the median ratio of
several repeats, with its min and max. A table goes to stdout and the results to --out
(`make bench`: bench/latest.json, which git ignores; bench/results.json is the run bench/README.md
quotes, updated on purpose with `make bench BENCH_OUT=bench/results.json`).

    python bench/run.py [--quick] [--only kernel,memory,...] --out bench/latest.json

One module per benchmark, named in BENCHMARKS and run in its order (overhead and collector reuse the
repository pipeline reproduced, and so does reproduce):

    kernel.py     per-epoch time of each training step / one np.dot(x, y) over the same float32 arrays
    memory.py     peak RSS of each train stage at N = 5e7 / the bytes of x and y
    publish.py    the track stage's metric logging, 10,000 epochs x 2 variants / bare MlflowClient.log_batch
    team.py       the same to make server's PostgreSQL-backed server; and each of 8 track stages publishing
                  different results at once / 1 track stage alone, as a rate per publisher (t1 / t8)
    longrun.py    the track stage of a 10^6-epoch result, w and loss bounded to track.max_points_per_metric
                  / the same with every epoch logged (the key set to the number of epochs)
    pipeline.py   `dvc repro -f` / the tutorial script with MLflow logging (and / the bare script)
    overhead.py   `dvc repro` with everything up to date / `dvc status`
    collector.py  the stage commands with gdpipe's garbage-collector setting / with the collector off
    reproduce.py  `make reproduce` of the challenger / `dvc repro -f` of the same commit
    serving.py    requests per second to the served champion / to a bare echo model served the same way
    distributed.py  the torch train stage at N = 1e7 on 2 processes / on 1: epochs per second; a rank's peak RSS /
                  the single process's

Each has run(quick, work) -> its results, the JSON under its name; rows(results) -> its lines of
the table; and, if it has them, GOALS {row label: ("<=" or ">=", bound)} and notes(results) -> the
lines printed below the table. common.py holds what they share.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import collector
import distributed
import kernel
import longrun
import memory
import overhead
import pipeline
import publish
import reproduce
import serving
import team
from common import Row
from gdpipe.core.files import write_json
from gdpipe.track import settings

BENCHMARKS = {
    "kernel": kernel,
    "memory": memory,
    "publish": publish,
    "team": team,
    "longrun": longrun,
    "pipeline": pipeline,
    "overhead": overhead,
    "collector": collector,
    "reproduce": reproduce,
    "serving": serving,
    "distributed": distributed,
}
# The goal of each figure: the median ratio must be at most (<=) or at least (>=) this.
GOALS = {label: goal for module in BENCHMARKS.values() for label, goal in getattr(module, "GOALS", {}).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats, to try the benchmark itself"
    )
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument("--out", help="where the results go (make bench: bench/latest.json)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required: where the results go (make bench writes bench/latest.json)")
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    settings.apply()  # gdpipe's MLflow settings (quiet logs among them) before any benchmark imports mlflow
    started = time.perf_counter()
    results: dict = {"machine": machine(), "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory(prefix="gdpipe-bench-") as scratch:
        for name, module in BENCHMARKS.items():
            if name in chosen:
                section_started = time.perf_counter()
                results[name] = module.run(args.quick, Path(scratch))
                results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - section_started, 1)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["goals"] = GOALS
    results["table"] = format_table(results).splitlines()
    write_json(args.out, results)
    print(format_table(results))
    notes = [
        line
        for name, module in BENCHMARKS.items()
        if name in results and hasattr(module, "notes")
        for line in module.notes(results[name])
    ]
    if notes:
        print("\n" + "\n".join(notes))
    host = results["machine"]
    print(
        f"\n{host['nproc']} cores, {host['cpu']}, {host['memory_gib']} GiB; "
        f"load {host['load_average_at_start'][0]:.2f} at start; {results['total_seconds']:.0f} s; written to {args.out}"
    )
    return 0


def rows(results: dict) -> list[Row]:
    """(label, summary, goal) for the table, benchmark by benchmark; goals only where the issue sets one."""
    return [row for name, module in BENCHMARKS.items() if name in results for row in module.rows(results[name])]


def format_table(results: dict) -> str:
    """The table of every row: median, min and max ratio, the goal and whether the median meets it."""
    lines = [f"{'measure':<34} {'median':>8} {'min':>8} {'max':>8} {'goal':>7}  verdict", "-" * 78]
    for label, summary, goal in rows(results):
        verdict = goal_text = ""
        if goal is not None:
            direction, bound = goal
            met = summary["median"] <= bound if direction == "<=" else summary["median"] >= bound
            verdict, goal_text = "PASS" if met else "MISS", f"{direction} {bound:g}"
        ratios = " ".join(f"{summary[key]:>7.3f}x" for key in ("median", "min", "max"))
        lines.append(f"{label:<34} {ratios} {goal_text:>7}  {verdict}")
    return "\n".join(lines)


def machine() -> dict:
    """What the figures were measured on."""
    import numpy as np

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    info = {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **{name: _version(name) for name in ("torch", "mlflow", "dvc")},
        "load_average_at_start": os.getloadavg(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {key: pool.get(key) for key in ("internal_api", "version", "architecture", "num_threads")}
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
    except ImportError:
        pass
    return info


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
