"""serving: requests per second to the champion as make serve serves it (behind the request guard) / to a
bare echo model (bench/echo_model.py) under plain `mlflow models serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from common import Row, say, summarize, timed
from support import REPO, VENV_BIN, child_env, copy_repo, free_port, wait_for_server

GOALS = {"serving, champion / echo model": (">=", 0.9)}
CLIENTS = 8
REQUEST = b'{"inputs": [5.0]}'


def run(quick: bool, work: Path) -> dict:
    """Requests per second at 8 concurrent clients: the champion / a bare echo model, served the same way.

    The champion is served as `make serve` serves it (MLflow's scoring app behind gdpipe's request guard),
    the echo model by `mlflow models serve --env-manager local`, both on 127.0.0.1 from the same store, with
    the same signature and input example: the ratio is the cost of the model and of the guard. The servers
    take turns, one at a time, repeat by repeat.
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
    mlflow_serve = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", echo.model_uri, "--env-manager", "local"]
    commands = {
        "champion": [str(VENV_BIN / "python"), "-m", "gdpipe.track.registry", "serve", "--host", "127.0.0.1", "--port"],
        "echo": [*mlflow_serve, "-h", "127.0.0.1", "-p"],
    }
    seconds = 2.0 if quick else 5.0
    repeats = 2 if quick else 3
    ratios, latencies, rates = [], {"champion": [], "echo": []}, {"champion": [], "echo": []}
    for repeat in range(repeats):
        say(f"serving: repeat {repeat + 1}/{repeats}")
        for name in ("champion", "echo") if repeat % 2 == 0 else ("echo", "champion"):
            rate, took = served_rate(commands[name], uri, repo, seconds)
            rates[name].append(rate)
            latencies[name] += took
        ratios.append(rates["champion"][-1] / rates["echo"][-1])
    return summarize(ratios) | {
        "requests_per_second": rates,
        "latency_ms": {name: percentiles(values) for name, values in latencies.items()},
        "clients": CLIENTS,
        "seconds_per_measurement": seconds,
    }


def served_rate(command: list[str], uri: str, repo: Path, seconds: float) -> tuple[float, list[float]]:
    """Serve with `command` (its last option takes the port), load it with CLIENTS keep-alive clients for
    `seconds`: requests per second and latencies."""
    import http.client
    import threading

    port = free_port()
    log = repo.parent / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, str(port)], cwd=repo, env=child_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH="src"), stdout=out,
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


def rows(result: dict) -> list[Row]:
    """One row."""
    return [("serving, champion / echo model", result, GOALS["serving, champion / echo model"])]


def notes(result: dict) -> list[str]:
    """The latencies of both servers."""
    latency = {name: f"p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms" for name, ms in result["latency_ms"].items()}
    return [f"serving, {CLIENTS} clients: champion {latency['champion']}; echo {latency['echo']}"]
