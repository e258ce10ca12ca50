"""make bench: gdpipe held against the hardware floor and against the plain tutorial script.

Every figure is a ratio of two measurements taken in the same process or the same run,
interleaved repeat by repeat, because these machines are shared and noisy: the median ratio of
several repeats, with its min and max. A table goes to stdout and the results to --out
(`make bench`: bench/latest.json, which git ignores; bench/results.json is the run bench/README.md
quotes, updated on purpose with `make bench BENCH_OUT=bench/results.json`).

    python bench/run.py [--quick] [--only kernel,memory,...] --out bench/latest.json

1. kernel     per-epoch time of each training step / one np.dot(x, y) over the same float32 arrays
2. memory     peak RSS of each train stage at N = 5e7 / the bytes of x and y
3. publish    the track stage's metric logging, 10,000 epochs x 2 variants / bare MlflowClient.log_batch
   team       the same to make server's PostgreSQL-backed server; and each of 8 track stages publishing
              different results at once / 1 track stage alone, as a rate per publisher (t1 / t8)
   longrun    the track stage of a 10^6-epoch result, w and loss bounded to track.max_points_per_metric
              / the same with every epoch logged (the key set to the number of epochs)
4. pipeline   `dvc repro -f` / the tutorial script with MLflow logging (and / the bare script)
5. overhead   `dvc repro` with everything up to date / `dvc status`
6. collector  the stage commands with gdpipe's garbage-collector setting / with the collector off
7. serving    requests per second to the served champion / to a bare echo model served the same way
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

# This checkout's code and test helpers, whatever the venv's editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import gdpipe.track  # noqa: F401  (before any mlflow import: gdpipe's MLflow settings, quiet logs among them)
from gdpipe.core.files import write_json
from support import (
    MAKE_ENV,
    REPO,
    TRACK_ARGS,
    VENV_BIN,
    build_workspace,
    child_env,
    copy_repo,
    free_port,
    load_default_params,
    wait_for_server,
    with_overrides,
    write_yaml,
)

SRC = REPO / "src"
# The goal of each figure: the median ratio must be at most (<=) or at least (>=) this.
GOALS = {
    "kernel numpy N=1e7": ("<=", 3.0),
    "kernel torch N=1e7": ("<=", 10.0),
    "memory numpy N=5e7": ("<=", 1.6),
    "memory torch N=5e7": ("<=", 3.0),
    "publish 10k epochs x 2": ("<=", 1.2),
    "team server 10k epochs x 2": ("<=", 1.2),
    "pipeline / tutorial+mlflow": ("<=", 1.0),
    "repro up to date / status": ("<=", 1.3),
    "serving, champion / echo model": (">=", 0.9),
}


def summarize(ratios: list[float]) -> dict:
    """Median, min and max of the per-repeat ratios, and the ratios themselves."""
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "repeats": [round(r, 4) for r in ratios],
    }


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- 1. kernel ------------------------------------------------------------------------------

KERNEL_VARIANTS = ("numpy", "torch", "tutorial-numpy", "tutorial-torch")


def kernel_child(variant: str, sizes: list[int], repeats: int) -> dict:
    """In a fresh process (so one variant's process settings cannot help another): per-epoch ratios."""
    import numpy as np

    sys.path.insert(0, str(SRC))
    from gdpipe.core import config
    from gdpipe.data import generate

    results = {}
    for n in sizes:
        dataset = generate(
            config.DataParams(
                n_samples=n, true_w=2.0, noise_std=0.1, seed=0, x_layout="uniform", x_low=-1.0, x_high=1.0
            )
        )
        x, y = dataset.x, dataset.y
        epochs = max(3, min(200, int(3e7 // n)))
        run = _epochs_runner(variant, dataset, epochs)
        run()  # warm-up: first-touch page faults, lazy initialisation
        ratios = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(epochs):
                np.dot(x, y)
            floor = time.perf_counter() - start
            start = time.perf_counter()
            run()
            ratios.append((time.perf_counter() - start) / floor)
        results[str(n)] = summarize(ratios) | {"epochs_per_repeat": epochs}
    return results


def _epochs_runner(variant: str, dataset, epochs: int):
    """A function that runs `epochs` epochs of one variant on `dataset`."""
    import numpy as np

    lr = 0.1
    if variant in ("numpy", "torch"):
        from gdpipe import train
        from gdpipe.core import config

        params = config.TrainParams(
            lr=lr,
            epochs=epochs,
            w_init=0.0,
            log_every=1,
            numpy=config.NumpyParams(gradient="mean"),
            torch=config.TorchParams(device="cpu"),
        )
        train.stepper_class(variant, dataset.x.nbytes)  # imports torch, as the train stage does before its clock starts
        return lambda: train.train(variant, dataset, params)
    if variant == "tutorial-numpy":
        # The lesson's NumPy cell, with its gradient made the mean (its sum diverges at large N).
        x, y = dataset.x, dataset.y

        def run():
            w = 0.0
            for _ in range(epochs):
                y_pred = w * x
                ((y_pred - y) ** 2).mean()  # the loss, computed as the lesson does and unused
                dw = np.dot(2 * x, y_pred - y).mean() / x.size
                w -= lr * dw

        return run
    import torch

    x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)

    def run():  # the lesson's torch cell
        w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)
        for _ in range(epochs):
            y_pred = w * x
            loss = ((y_pred - y) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
            w.grad.zero_()

    return run


def bench_kernel(quick: bool) -> dict:
    sizes = [10**5, 10**6] if quick else [10**5, 10**6, 10**7]
    repeats = 3 if quick else 7
    out: dict = {}
    for variant in KERNEL_VARIANTS:
        say(f"kernel: {variant}")
        for n in sizes:
            # One process per size too: like the train stage, torch settles its allocator for the data it meets first.
            done = subprocess.run(
                [sys.executable, __file__, "--kernel-child", variant, "--sizes", str(n), "--repeats", str(repeats)],
                capture_output=True,
                text=True,
                env=child_env(),
                check=True,
            )
            out.setdefault(variant, {}).update(json.loads(done.stdout))
    return out


# --- 2. memory ------------------------------------------------------------------------------


def write_params(path: Path, **overrides) -> Path:
    """params.yaml of the repo with dotted overrides, as YAML."""
    return write_yaml(path, with_overrides(load_default_params(), overrides))


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


def bench_memory(quick: bool, work: Path) -> dict:
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


# --- 3. publish -----------------------------------------------------------------------------


def by_hand(history, epochs: int) -> list:
    """What a user would send by hand: the same values and steps as plain Metric objects, one timestamp."""
    from mlflow.entities import Metric

    metrics = []
    for epoch, w, loss in zip(history.epoch.tolist(), history.w.tolist(), history.loss.tolist(), strict=True):
        metrics += [Metric("w", w, 1, epoch), Metric("loss", loss, 1, epoch)]
    return [*metrics, Metric("prediction", 10.0, 2, epochs)]


def publish_records(epochs: int, work: Path) -> list:
    """One RunRecord per variant with `epochs` trained epochs (no files: only metrics are logged)."""
    sys.path.insert(0, str(SRC))
    from gdpipe.core import config
    from gdpipe.data import generate
    from gdpipe.track.record import RunRecord, spread
    from gdpipe.train import train

    params = config.load(write_params(work / f"publish-params-{epochs}.yaml", **{"train.epochs": epochs}))
    dataset = generate(params.data)
    records = []
    for variant in config.VARIANTS:
        history = train(variant, dataset, params.train)
        records.append(
            RunRecord(
                variant=variant,
                name=variant,
                fingerprint="",
                params={},
                tags={},
                history=history,
                metric_rows=spread(history.epoch.size, epochs),  # every epoch
                final_metrics={"prediction": 10.0},
                model_path=Path(),
                has_model=False,
                started_ms=1,
                finished_ms=2,
                dataset_path=Path(),
                dataset_sha256="",
                artifacts=(),
            )
        )
    return records


def publish_ratios(uri: str, artifacts: Path | None, records: list, epochs: int, repeats: int) -> dict:
    """gdpipe's metric logging vs a bare log_batch of the same Metric values, fresh runs of one store."""
    from mlflow import MlflowClient

    from gdpipe.track import publish

    client = MlflowClient(uri)
    experiment = client.create_experiment(
        f"bench-{time.time_ns()}", artifact_location=artifacts.as_uri() if artifacts else None
    )
    bare_metrics = {record.variant: by_hand(record.history, epochs) for record in records}
    ratios = []
    for repeat in range(repeats):
        spent = {"gdpipe": 0.0, "bare": 0.0}
        # Alternate which goes first: the store grows as it goes.
        for side in ("gdpipe", "bare") if repeat % 2 == 0 else ("bare", "gdpipe"):
            for record in records:
                run_id = client.create_run(experiment).info.run_id
                start = time.perf_counter()
                if side == "gdpipe":
                    publish.log_metrics(client, run_id, record)
                else:
                    client.log_batch(run_id, metrics=bare_metrics[record.variant])
                spent[side] += time.perf_counter() - start
        ratios.append(spent["gdpipe"] / spent["bare"])
    return summarize(ratios) | {"epochs": epochs, "metrics_per_variant": len(bare_metrics["numpy"])}


def bench_publish(quick: bool, work: Path) -> dict:
    """The sqlite store."""
    epochs, repeats = (2_000, 2) if quick else (10_000, 3)
    os.environ.update(MAKE_ENV)  # both sides run with the settings `make` exports
    records = publish_records(epochs, work)
    say(f"publish: {epochs} epochs x {len(records)} variants, {repeats} repeats")
    (work / "publish").mkdir()
    return publish_ratios(
        f"sqlite:///{work / 'publish' / 'mlflow.db'}", work / "publish" / "artifacts", records, epochs, repeats
    )


def bench_team(quick: bool, work: Path) -> dict:
    """make server's PostgreSQL-backed server: the metric logging as in publish, and the track stage of 8
    publishers of different results at once against one publisher alone (throughput per publisher)."""
    epochs, repeats = (2_000, 2) if quick else (10_000, 3)
    os.environ.update(MAKE_ENV)
    work.chmod(0o711)  # PostgreSQL runs as the user postgres when we are root: it must reach its folder
    port = free_port()
    settings = [f"SERVER_DIR={work / 'team-server'}", f"SERVER_PORT={port}"]
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]
    subprocess.run([*make, "server", *settings], cwd=REPO, env=child_env(), check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        records = publish_records(epochs, work)
        say(f"team: {epochs} epochs x {len(records)} variants to {url}, {repeats} repeats")
        logging = publish_ratios(url, None, records, epochs, repeats)
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


def bench_longrun(quick: bool, work: Path) -> dict:
    """The track stage of a long result, bounded (params.yaml's max_points_per_metric) / every epoch logged,
    each into a fresh copy of one empty store; with the database's size and MLflow's read of one metric's history.

    One repeat: every epoch of 10^6 takes minutes to log, and the ratio is far from 1 either way.
    """
    from mlflow import MlflowClient

    epochs = 100_000 if quick else 1_000_000
    os.environ.update(MAKE_ENV)
    say(f"longrun: training {epochs} epochs of both variants")
    workspace = build_workspace(work / "longrun", {"train.epochs": epochs})
    bounded = load_default_params()["track"]["max_points_per_metric"]
    template = empty_store(work / "longrun-template")
    track = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
    seconds, database_mb, history_seconds = {}, {}, {}
    for side, points in (("bounded", bounded), ("every epoch", epochs)):
        document = YAML(typ="safe").load((workspace / "params.yaml").read_text())
        write_yaml(workspace / "params.yaml", with_overrides(document, {"track.max_points_per_metric": points}))
        db = work / f"longrun-{points}" / "mlflow.db"
        db.parent.mkdir()
        shutil.copy(template, db)
        uri = f"sqlite:///{db}"
        say(f"longrun: track stage, {side} ({points} points per metric)")
        seconds[side] = timed(track, workspace, PYTHONPATH=str(SRC), MLFLOW_TRACKING_URI=uri)
        database_mb[side] = round(db.stat().st_size / 1e6, 1)  # beside it, artifacts: the same for both
        run_id = json.loads((workspace / "runs.json").read_text())["torch"]["run_id"]
        start = time.perf_counter()
        points_read = len(MlflowClient(uri).get_metric_history(run_id, "loss"))
        history_seconds[side] = time.perf_counter() - start
        assert points_read == min(points, epochs), points_read
    ratio = seconds["bounded"] / seconds["every epoch"]
    return summarize([ratio]) | {
        "epochs": epochs,
        "max_points_per_metric": bounded,
        "seconds": seconds,
        "database_mb": database_mb,
        "metric_history_seconds": history_seconds,
    }


# --- 4. pipeline and 5. overhead --------------------------------------------------------------


def empty_store(folder: Path) -> Path:
    """An MLflow sqlite store with its tables created and nothing in it, to copy before each run."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def timed(command: list[str], cwd: Path, **env: str) -> float:
    """Wall time of a command that must succeed."""
    return timed_with_output(command, cwd, **env)[0]


def timed_with_output(command: list[str], cwd: Path, **env: str) -> tuple[float, str]:
    """Wall time and stdout of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=child_env(**env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout


def stage_commands(repro_stdout: str) -> list[tuple[str, str]]:
    """(stage, command) in the order `dvc repro` ran them, as it printed them ("Running stage 'x':", then "> cmd")."""
    commands, stage = [], None
    for line in repro_stdout.splitlines():
        if line.startswith("Running stage '"):
            stage = line.split("'")[1]
        elif line.startswith("> ") and stage:
            commands.append((stage, line[2:]))
            stage = None
    return commands


def fresh_store(repo: Path, template: Path) -> None:
    """The repo's mlruns/ as a copy of the empty template store."""
    shutil.rmtree(repo / "mlruns")
    (repo / "mlruns").mkdir()
    shutil.copy(template, repo / "mlruns" / "mlflow.db")


def bench_pipeline(quick: bool, work: Path) -> dict:
    """dvc repro -f vs the tutorial script with MLflow, each into a fresh copy of one empty store."""
    repeats = 2 if quick else 3
    repo = copy_repo(work / "repo")
    template = empty_store(work / "template")
    dvc = str(VENV_BIN / "dvc")
    say("pipeline: first dvc repro (warm-up, untimed)")
    timed([dvc, "repro"], repo)
    script_dir = work / "script"
    to_script, to_bare, pipeline_s, script_s, bare_s = [], [], [], [], []
    for repeat in range(repeats):
        say(f"pipeline: repeat {repeat + 1}/{repeats}")
        fresh_store(repo, template)
        pipeline, repro_stdout = timed_with_output([dvc, "repro", "-f"], repo)
        shutil.rmtree(script_dir, ignore_errors=True)
        script_dir.mkdir()
        shutil.copy(template, script_dir / "mlflow.db")
        script = timed(
            [sys.executable, str(REPO / "bench/tutorial_mlflow.py"), f"sqlite:///{script_dir / 'mlflow.db'}"],
            script_dir,
        )
        bare = timed([sys.executable, str(REPO / "bench/tutorial.py")], script_dir)
        pipeline_s.append(pipeline), script_s.append(script), bare_s.append(bare)
        to_script.append(pipeline / script)
        to_bare.append(pipeline / bare)
    # Where the pipeline's time goes: each stage's command run alone (as DVC printed it), and what is
    # left of the median, DVC's own work (start-up, hashing, caching, rewriting dvc.lock per stage).
    say("pipeline: each stage's command alone")
    fresh_store(repo, template)
    stages = {
        stage: timed(["sh", "-c", command], repo, DVC_ROOT=str(repo)) for stage, command in stage_commands(repro_stdout)
    }
    return {
        "to_script": summarize(to_script),
        "to_bare_script": summarize(to_bare),
        "seconds": {"pipeline": pipeline_s, "script": script_s, "bare_script": bare_s},
        "breakdown_seconds": stages | {"dvc": statistics.median(pipeline_s) - sum(stages.values())},
        "package_scan_seconds": package_scan_seconds(),
    }


def package_scan_seconds() -> float:
    """What log_model's check of its requirements costs the track stage: MLflow reads the metadata of
    every installed distribution (importlib_metadata.packages_distributions), timed here alone in a
    fresh process. gdpipe once skipped it by patching a private MLflow function; public API pays it.
    """
    script = "import time, importlib_metadata as m; t = time.perf_counter(); m.packages_distributions(); "
    script += "print(time.perf_counter() - t)"
    return statistics.median(float(timed_with_output([sys.executable, "-c", script], REPO)[1]) for _ in range(3))


# A stage script run as DVC runs it, optionally with the garbage collector off from the start.
STAGE_WITH_COLLECTOR = """
import gc, runpy, sys
if sys.argv[1] == "off":
    gc.disable()
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def bench_collector(quick: bool, work: Path) -> dict:
    """Every stage command with gdpipe's collector setting (on, run_command's threshold) / with it off.

    Off is what gdpipe did before: gc.disable() for every command, training included.
    """
    repo = work / "repo"
    if not repo.exists():
        copy_repo(repo)
        timed([str(VENV_BIN / "dvc"), "repro"], repo)
    template = work / "template" / "mlflow.db"
    if not template.exists():
        template = empty_store(work / "template")
    commands = [shlex.split(command.split("stages/python", 1)[1]) for _, command in stage_commands(repro_output(repo))]
    repeats = 2 if quick else 4
    ratios, seconds = [], {"on": [], "off": []}
    say(f"collector: {len(commands)} stage commands, {repeats} repeats")
    for repeat in range(repeats):
        spent = {}
        for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            fresh_store(repo, template)
            spent[mode] = sum(
                timed(
                    [sys.executable, "-c", STAGE_WITH_COLLECTOR, mode, *command],
                    repo,
                    DVC_ROOT=str(repo),
                    PYTHONPATH="src",
                )
                for command in commands
            )
            seconds[mode].append(spent[mode])
        ratios.append(spent["on"] / spent["off"])
    return summarize(ratios) | {"seconds": seconds}


# --- 7. serving ------------------------------------------------------------------------------

CLIENTS = 8
REQUEST = b'{"inputs": [5.0]}'


def bench_serving(quick: bool, work: Path) -> dict:
    """Requests per second at 8 concurrent clients: the champion / a bare echo model, served the same way.

    Both are `mlflow models serve --env-manager local` on 127.0.0.1 from the same store, with the same
    signature and input example; the servers take turns, one at a time, repeat by repeat.
    """
    import mlflow

    repo = work / "serving"
    copy_repo(repo)
    say("serving: make promote")
    timed(["make", "-o", ".venv/.installed", "promote"], repo)
    uri = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        from gdpipe.track.publish import INPUT_EXAMPLE, SIGNATURE

        code = str(REPO / "bench" / "echo_model.py")
        echo = mlflow.pyfunc.log_model(name="echo", python_model=code, signature=SIGNATURE, input_example=INPUT_EXAMPLE)
    models = {"champion": "models:/gdpipe-torch@champion", "echo": echo.model_uri}
    seconds = 2.0 if quick else 5.0
    repeats = 2 if quick else 3
    ratios, latencies, rates = [], {"champion": [], "echo": []}, {"champion": [], "echo": []}
    for repeat in range(repeats):
        say(f"serving: repeat {repeat + 1}/{repeats}")
        for name in ("champion", "echo") if repeat % 2 == 0 else ("echo", "champion"):
            rate, took = served_rate(models[name], uri, repo, seconds)
            rates[name].append(rate)
            latencies[name] += took
        ratios.append(rates["champion"][-1] / rates["echo"][-1])
    return summarize(ratios) | {
        "requests_per_second": rates,
        "latency_ms": {name: percentiles(values) for name, values in latencies.items()},
        "clients": CLIENTS,
        "seconds_per_measurement": seconds,
    }


def served_rate(model_uri: str, uri: str, repo: Path, seconds: float) -> tuple[float, list[float]]:
    """Serve `model_uri`, load it with CLIENTS keep-alive clients for `seconds`: requests per second and latencies."""
    import http.client
    import threading

    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-p", str(port)]
    log = repo.parent / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "-h", "127.0.0.1"], cwd=repo, env=child_env(MLFLOW_TRACKING_URI=uri), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_server(f"http://127.0.0.1:{port}", server, log)
        took: list[float] = []
        deadline = time.perf_counter() + seconds

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                connection.request("POST", "/invocations", REQUEST, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                assert answer.status == 200, answer.status
                took.append((time.perf_counter() - start) * 1000)
            connection.close()

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(took) / (time.perf_counter() - started), took
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def percentiles(values: list[float]) -> dict:
    """p50 and p99 of latencies in milliseconds."""
    ordered = sorted(values)
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def repro_output(repo: Path) -> str:
    """What `dvc repro --dry -f` prints: every stage and its command."""
    return timed_with_output([str(VENV_BIN / "dvc"), "repro", "--dry", "-f"], repo)[1]


def bench_overhead(quick: bool, work: Path) -> dict:
    """dvc repro with nothing to do vs dvc status, on the repo the pipeline bench reproduced."""
    repo = work / "repo"
    if not repo.exists():
        copy_repo(repo)
        timed([str(VENV_BIN / "dvc"), "repro"], repo)
    repeats = 3 if quick else 7
    ratios = []
    say(f"overhead: {repeats} repeats")
    for _ in range(repeats):
        status = timed([str(VENV_BIN / "dvc"), "status"], repo)
        repro = timed([str(VENV_BIN / "dvc"), "repro"], repo)
        ratios.append(repro / status)
    return summarize(ratios)


# --- report ---------------------------------------------------------------------------------


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


def rows(results: dict) -> list[tuple[str, dict, float | None]]:
    """(label, summary, goal) for the table; goals only where the issue sets one."""
    table = []
    for variant, sizes in results.get("kernel", {}).items():
        for n, summary in sizes.items():
            label = f"kernel {variant} N=1e{len(n) - 1}"
            table.append((label, summary, GOALS.get(label)))
    memory = results.get("memory")
    if memory:
        for variant in ("numpy", "torch"):
            label = f"memory {variant} N={memory['n']:.0e}".replace("e+0", "e")
            ratio = memory[variant]["ratio"]
            table.append((label, {"median": ratio, "min": ratio, "max": ratio}, GOALS.get(label)))
    if "publish" in results:
        label = f"publish {results['publish']['epochs'] // 1000}k epochs x 2"
        table.append((label, results["publish"], GOALS.get(label)))
    if "team" in results:
        label = f"team server {results['team']['log_batch']['epochs'] // 1000}k epochs x 2"
        table.append((label, results["team"]["log_batch"], GOALS.get(label)))
        table.append(("team, 8 publishers: rate of each", results["team"]["publishers"], None))
    if "longrun" in results:
        label = f"track 1e{len(str(results['longrun']['epochs'])) - 1} epochs, bounded / all"
        table.append((label, results["longrun"], None))
    if "pipeline" in results:
        table.append(
            ("pipeline / tutorial+mlflow", results["pipeline"]["to_script"], GOALS["pipeline / tutorial+mlflow"])
        )
        table.append(("pipeline / bare tutorial", results["pipeline"]["to_bare_script"], None))
    if "overhead" in results:
        table.append(("repro up to date / status", results["overhead"], GOALS["repro up to date / status"]))
    if "collector" in results:
        table.append(("stages, collector on / off", results["collector"], None))
    if "serving" in results:
        table.append(("serving, champion / echo model", results["serving"], GOALS["serving, champion / echo model"]))
    return table


def format_table(results: dict) -> str:
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


SECTIONS = ("kernel", "memory", "publish", "team", "longrun", "pipeline", "overhead", "collector", "serving")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats, to try the benchmark itself"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", help="where the results go (make bench: bench/latest.json)")
    parser.add_argument("--kernel-child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kernel_child:
        print(json.dumps(kernel_child(args.kernel_child, [int(n) for n in args.sizes.split(",")], args.repeats)))
        return 0
    if not args.out:
        parser.error("--out is required: where the results go (make bench writes bench/latest.json)")
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    started = time.perf_counter()
    results: dict = {"machine": machine(), "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory(prefix="gdpipe-bench-") as scratch:
        work = Path(scratch)
        for name in SECTIONS:
            if name in chosen:
                section_started = time.perf_counter()
                if name == "kernel":
                    results[name] = bench_kernel(args.quick)
                else:
                    results[name] = globals()[f"bench_{name}"](args.quick, work)
                results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - section_started, 1)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["goals"] = GOALS
    results["table"] = format_table(results).splitlines()
    write_json(args.out, results)
    print(format_table(results))
    if "longrun" in results:
        longrun = results["longrun"]
        sides = "; ".join(
            f"{side} {longrun['seconds'][side]:.1f} s, database {longrun['database_mb'][side]:.0f} MB, "
            f"one metric's history read in {longrun['metric_history_seconds'][side]:.2f} s"
            for side in ("bounded", "every epoch")
        )
        print(f"\ntrack of {longrun['epochs']} epochs: {sides}")
    if "pipeline" in results:
        parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in results["pipeline"]["breakdown_seconds"].items())
        print(f"\npipeline, median {statistics.median(results['pipeline']['seconds']['pipeline']):.2f} s: {parts}")
        print(
            f"of track: log_model's scan of the installed packages {results['pipeline']['package_scan_seconds']:.2f} s"
        )
    if "team" in results:
        team = results["team"]["publishers"]
        alone, together = statistics.median(team["one_seconds"]), statistics.median(team["eight_seconds"])
        print(
            f"team server: 1 publisher {alone:.1f} s, 8 at once {together:.1f} s "
            f"({8 * alone / together:.1f} x the results per second of one)"
        )
    if "serving" in results:
        latency_ms = results["serving"]["latency_ms"]
        latency = {name: f"p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms" for name, ms in latency_ms.items()}
        print(f"serving, {CLIENTS} clients: champion {latency['champion']}; echo {latency['echo']}")
    host = results["machine"]
    print(
        f"\n{host['nproc']} cores, {host['cpu']}, {host['memory_gib']} GiB; "
        f"load {host['load_average_at_start'][0]:.2f} at start; {results['total_seconds']:.0f} s; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
