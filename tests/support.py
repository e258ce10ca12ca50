"""Plain helpers (no pytest) shared by the tests, through conftest.py, and by `make bench`:
throwaway copies of the repository, params files with overrides, child processes and their
environments, the stages run in this process, and a look into a sqlite MLflow store.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

from ruamel.yaml import YAML

from gdpipe.core.command import run_main

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# What the Makefile exports, so that tests and benchmarks run as `make` runs.
MAKE_ENV = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
VARIANTS = ("numpy", "torch")


# --- the repository and its params -------------------------------------------------------------


def copy_repo(destination: Path) -> Path:
    """Copy this checkout's tracked and new files (not outputs, caches or .venv) into a fresh git repo.

    The copy's .venv is a symlink to this one: run make there only with `-o .venv/.installed`, or
    make would reinstall the shared venv from the copy.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    destination.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(REPO / ".venv")
    git = ["git", "-c", "user.name=gdpipe tests", "-c", "user.email=tests@gdpipe.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=destination, check=True)
    return destination


def load_default_params() -> dict:
    """params.yaml of the repository as a plain dict."""
    return YAML(typ="safe").load((REPO / "params.yaml").read_text())


def with_overrides(document: dict, overrides: dict[str, object]) -> dict:
    """A copy of `document` with dotted keys set, e.g. {"train.lr": 0.1}."""
    result = copy.deepcopy(document)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[last] = value
    return result


def committed_md5(path: str) -> str:
    """The md5 that the repository's dvc.lock records for the output `path`."""
    lock = YAML(typ="safe").load((REPO / "dvc.lock").read_text())
    return next(out["md5"] for stage in lock["stages"].values() for out in stage["outs"] if out["path"] == path)


def write_yaml(path: Path, document: object) -> Path:
    """Dump `document` as YAML to `path`."""
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return path


# --- child processes ---------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child dvc, make or stage process: this venv first, none of the caller's
    DVC, MLflow or make settings (DVC_ROOT, a tracking server, timeouts, MAKELEVEL), and the
    settings the Makefile exports."""
    # MAKE*: under `make test`, a child make would print "Entering directory" around its output.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "GDPIPE_", "MAKE", "MFLAGS"))}
    return env | {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"} | MAKE_ENV | extra


def src_env(**extra: str) -> dict[str, str]:
    """A child process's environment that imports this checkout's src/ (never another checkout's install)."""
    return child_env(**({"PYTHONPATH": str(REPO / "src")} | extra))


def wait_for(condition, process: subprocess.Popen, seconds: float = 60, what: str = "") -> None:
    """Poll `condition` until it holds, while `process` is still running."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (once the probe is closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Wait until `url`/health answers 200; fail with the server's log if it exits first."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"server at {url} did not start")


def dvc(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the venv's dvc in `repo` and return the finished process (output captured as text)."""
    done = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=repo, env=env or child_env(), capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def stages_run(output: str) -> set[str]:
    """The names of the stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def make(repo: Path, *args: str, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run make in a copy of the project, output captured. -o: the copy's .venv is this checkout's (a
    symlink), so make never reinstalls it from the copy."""
    command = ["make", "-o", ".venv/.installed", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env or child_env(), timeout=timeout)


@contextlib.contextmanager
def served(repo: Path, target: str, port_setting: str) -> Iterator[str]:
    """`make <target> <port_setting>=<a free port>` running in a copy of the project, once it answers
    /health: its URL. The server and everything it started are stopped afterwards."""
    port = free_port()
    log = repo.parent / f"{target}.log"
    with log.open("w") as out:
        command = ["make", "-o", ".venv/.installed", target, f"{port_setting}={port}"]
        server = subprocess.Popen(
            command, cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def run_track(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The track stage as a child process in `folder` (a finished workspace), its output captured."""
    command = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)


def start_track(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    """The same, started: its stdout and stderr are pipes, to read with communicate()."""
    command = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def publish_forked(folders: list[Path], env: dict[str, str]) -> list[tuple[int, str, str]]:
    """The track stage in every folder at the same moment, each a process forked from one that imported it
    (tests/publishers.py): (exit code, stdout, stderr) of each."""
    with tempfile.TemporaryDirectory() as outputs:
        command = [sys.executable, str(REPO / "tests" / "publishers.py"), outputs, *map(str, folders)]
        # A session of its own: if it hangs, its publishers go with it.
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        ) as launcher:
            try:
                stdout, stderr = launcher.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                raise
        if launcher.returncode != 0:
            raise RuntimeError(f"tests/publishers.py failed: {stderr[-3000:]}")
        return [
            (code, *(Path(outputs, f"{index}.{suffix}").read_text() for suffix in ("out", "err")))
            for index, code in enumerate(json.loads(stdout))
        ]


# A test hook, installed as sitecustomize in a child: it touches a file when training starts, so a
# signal can be sent while the process is certainly inside training.
TRAINING_STARTED_HOOK = """
import os
from pathlib import Path

if os.environ.get("GDPIPE_TEST_TRAINING_STARTED"):
    import gdpipe.train

    _train = gdpipe.train.train

    def _announcing_train(*args, **kwargs):
        Path(os.environ["GDPIPE_TEST_TRAINING_STARTED"]).touch()
        return _train(*args, **kwargs)

    gdpipe.train.train = _announcing_train
"""


# A test hook, installed as sitecustomize in the processes torchrun starts (each has RANK): rank r writes
# <GDPIPE_TEST_RANKS>/started-r (its pid) when its training starts, and rank-r.json as it exits: its pid, its
# resident memory just before it opened the data set, and its peak (VmHWM), in bytes.
RANK_HOOK = """
import atexit
import json
import os
from pathlib import Path

if os.environ.get("GDPIPE_TEST_RANKS") and "RANK" in os.environ:
    import gdpipe.train.loop
    from gdpipe.core.artifacts import Dataset

    folder, rank = Path(os.environ["GDPIPE_TEST_RANKS"]), os.environ["RANK"]
    facts = {"pid": os.getpid()}

    def _status(name):
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(name))
        return int(line.split()[1]) * 1024

    _open, _fit = Dataset.open, gdpipe.train.loop.fit

    def _measured_open(*args, **kwargs):
        facts["rss_before_data"] = _status("VmRSS:")
        return _open(*args, **kwargs)

    def _announcing_fit(*args, **kwargs):
        (folder / f"started-{rank}").write_text(str(os.getpid()))
        return _fit(*args, **kwargs)

    Dataset.open = _measured_open
    gdpipe.train.loop.fit = _announcing_fit
    atexit.register(lambda: (folder / f"rank-{rank}.json").write_text(json.dumps(facts | {"peak": _status("VmHWM:")})))
"""


# --- the stages, run in this process -----------------------------------------------------------


def stage(name: str) -> ModuleType:
    """stages/<name>.py as a module (imported once), to call its main or patch what it uses."""
    module_name = f"stage_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "stages" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def run_stage(main, argv: list[str]) -> tuple[int, str]:
    """A stage's exit code and stderr, run in this process the way its __main__ runs it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_main(main, argv)
    return code, err.getvalue()


def track_here(folder: Path, uri: str) -> tuple[int, str]:
    """The track stage run in this process in `folder` (a finished workspace), publishing to `uri`: its exit
    code and stderr, without a child's two seconds of importing MLflow. What a whole process prints, start-up
    included, or how it dies, is tested on a child (run_track)."""
    with mock.patch.dict(os.environ, MLFLOW_TRACKING_URI=uri), contextlib.chdir(folder):
        return run_stage(stage("track").main, TRACK_ARGS)


def assert_one_error_line(stderr: str, *names: str) -> None:
    """Exactly one line, `gdpipe: error: ...`, that mentions every one of `names`; never a traceback."""
    assert stderr.startswith("gdpipe: error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), stderr[:2000]
    assert "Traceback" not in stderr
    for name in names:
        assert name in stderr, (name, stderr[:2000])


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


TRAIN_ARGS = (
    "--variant numpy --params params.yaml --data data/dataset.npy --history history/numpy.csv --model models/numpy.json"
).split()
EVALUATE_ARGS = (
    "--params params.yaml --data data/dataset.npy --models models/numpy.json models/torch.json "
    "--histories history/numpy.csv history/torch.csv --out metrics.json --plot plots/curves.png"
).split()
EVALUATE_OUTS = ["metrics.json", "plots/curves.png"]
# Every output of the pipeline: the ones DVC caches, metrics.json (in git) and published.json (not cached).
OUTPUTS = [
    "data/dataset.npy",
    "history/numpy.csv",
    "history/torch.csv",
    "models/numpy.json",
    "models/torch.json",
    "metrics.json",
    "plots/curves.png",
    "published.json",
]
CACHED = [name for name in OUTPUTS if name not in ("metrics.json", "published.json")]
TRACK_ARGS = (
    "--params params.yaml --data data/dataset.npy --histories history/numpy.csv history/torch.csv "
    "--models models/numpy.json models/torch.json --metrics metrics.json --plot plots/curves.png "
    "--published published.json --runs runs.json"
).split()


def build_workspace(folder: Path, overrides: dict | None = None) -> Path:
    """The outputs of generate, train and evaluate for the repository's params (with overrides), made here."""
    folder.mkdir(parents=True, exist_ok=True)
    params = write_yaml(folder / "params.yaml", with_overrides(load_default_params(), overrides or {}))
    steps = [(stage("generate").main, ["--params", str(params), "--out", "data/dataset.npy"])]
    for variant in VARIANTS:
        argv = (
            f"--variant {variant} --data data/dataset.npy --history history/{variant}.csv --model models/{variant}.json"
        )
        steps.append((stage("train").main, ["--params", str(params), *argv.split()]))
    steps.append((stage("evaluate").main, EVALUATE_ARGS))
    with contextlib.chdir(folder):
        for main, argv in steps:
            code, stderr = run_stage(main, argv)
            assert code == 0, stderr
    return folder


# --- a sqlite MLflow store, read directly ------------------------------------------------------


def runs_in_store(db: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in a sqlite store, read directly (nothing when the store is not made yet)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as connection:
            return connection.execute("SELECT run_uuid, status FROM runs").fetchall()
    except sqlite3.OperationalError:  # the tables are being created, or a writer holds the lock
        return []


# --- the lesson's metrics, for the gate --------------------------------------------------------

# metrics.json of the lesson's run (100 epochs, lr 0.01, x = 1..4, y = 2x), as evaluate writes it.
# Both variants end the lesson on the same float32 w, so their sections are equal.
LESSON_VARIANT = {
    "diverged": False,
    "epochs_trained": 100,
    "w": 1.9999996423721313,
    "loss": 8.988365607365267e-13,
    "prediction": 9.999998211860657,
    "abs_error": 1.7881393432617188e-06,
    "w_star_distance": 3.5762786865234375e-07,
}
LESSON = {
    "numpy": dict(LESSON_VARIANT),
    "torch": dict(LESSON_VARIANT),
    "optimum": {"w_star": 2.0, "prediction": 10.0, "true_value": 10.0, "x": 5.0},
    "parity": {"max_abs_w_diff": 5.960464477539063e-08},
}


def lesson(**changes: dict) -> dict:
    """A deep copy of LESSON with whole sections replaced (numpy={...}) or removed (numpy=None)."""
    metrics = copy.deepcopy(LESSON)
    for section, content in changes.items():
        if content is None:
            del metrics[section]
        else:
            metrics[section] = content
    return metrics


def params_yaml(thresholds: str | None) -> str:
    """This project's params.yaml with its thresholds section replaced by the YAML text given (None: left out)."""
    document = YAML(typ="safe").load((REPO / "params.yaml").read_text(encoding="utf-8"))
    # JSON is YAML 1.2: the other sections are kept exactly, the thresholds text is the case under test.
    lines = [f"{section}: {json.dumps(value)}" for section, value in document.items() if section != "thresholds"]
    return "\n".join(lines + ([thresholds] if thresholds is not None else [])) + "\n"


# --- promotions that race -------------------------------------------------------------------------


class FirstWritesTogether:
    """A client that, after its first write to the store, waits until every other promoter of the round has
    made its first write too: every promotion has begun before any of them goes on (a barrier of `threading`)."""

    def __init__(self, client, barrier):
        self.client, self.barrier, self.waited = client, barrier, False

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if self.waited or not name.startswith(("set_", "delete_", "create_")):
            return call

        def write(*args, **kwargs):
            done = call(*args, **kwargs)
            if not self.waited:
                self.waited = True
                self.barrier.wait(timeout=120)
            return done

        return write


def make_results(client, prefix: str, count: int) -> list[dict[str, str]]:
    """`count` results, each one new version of `<prefix>-numpy` and of `<prefix>-torch` (registered here,
    of an empty run): name -> version. The torch versions are made in the reverse order, so that result i
    is not version i of both."""
    names = [f"{prefix}-{variant}" for variant in VARIANTS]
    for name in names:
        client.create_registered_model(name)
    experiment = client.create_experiment(f"{prefix}-results")

    def version(name: str) -> str:
        run = client.create_run(experiment).info.run_id  # a server takes a version's source from a run only
        return client.create_model_version(name, f"runs:/{run}/model", run_id=run).version

    numpy = [version(names[0]) for _ in range(count)]
    torch = [version(names[1]) for _ in range(count)][::-1]
    return [{names[0]: str(a), names[1]: str(b)} for a, b in zip(numpy, torch, strict=True)]


def promote_at_once(clients, results: list[dict[str, str]], together: bool) -> list[tuple[list[str], bool]]:
    """`champion.promote` of each result (one per client, a passed gate), all in threads started at
    once: what each returned. `together`: each waits after its first write for all the others'."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gdpipe.track.champion import promote

    start = threading.Barrier(len(results))
    passed = {"passed": True, "failed": []}

    def promoter(index: int) -> tuple[list[str], bool]:
        client = FirstWritesTogether(clients[index], start) if together else clients[index]
        current = {
            name.rsplit("-", 1)[1]: {"model_name": name, "model_version": version, "status": "trained"}
            for name, version in results[index].items()
        }
        if not together:
            start.wait(timeout=120)
        return promote(client, current, passed)

    with ThreadPoolExecutor(len(results)) as pool:
        return list(pool.map(promoter, range(len(results))))  # list(): raises what a promoter raised


def champions(client, names) -> dict[str, str | None]:
    """Each model's `champion` alias, as the store holds it now."""
    from mlflow.exceptions import MlflowException

    held = {}
    for name in names:
        try:
            held[name] = str(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            held[name] = None
    return held


def assert_one_champion_per_round(client, results, rounds: int, promoters: int, together: bool) -> None:
    """`rounds` rounds of `promoters` promotions of different results at once: after each, both
    champions are versions of one of them, and what every promoter said is true: the one whose result
    is champion says so, and exits 0 (True); every other one names the champion it saw win (with
    `together`, all promoters wrote before any looked: that is the final one) and exits 1 (False), or,
    started freely, may have ended before the winner began to write and said its own was champion."""
    names = list(results[0])
    for turn in range(rounds):
        mine = [results[(turn + index) % len(results)] for index in range(promoters)]
        said = promote_at_once([client] * promoters, mine, together)
        final = champions(client, names)
        assert final in mine, f"round {turn}: the champions {final} are not one result of {mine}: {said}"
        winner = mine.index(final)
        won = [f"{name}: version {final[name]} is champion (" for name in names]
        assert said[winner][1] and len(said[winner][0]) == 2 and all(map(str.startswith, said[winner][0], won)), said
        for index, (lines, promoted) in enumerate(said):
            if index == winner:
                continue
            seen = [final] if together else [result for result in mine if result is not mine[index]]
            lost = [
                [
                    f"{name}: version {result[name]} is champion (another promotion at the same time won); "
                    f"version {mine[index][name]} was promoted, then replaced"
                    for name in names
                ]
                for result in seen
            ]
            own = [f"{name}: version {mine[index][name]} is champion (" for name in names]
            ended_first = not together and promoted and all(map(str.startswith, lines, own)) and len(lines) == 2
            assert (not promoted and lines in lost) or ended_first, f"round {turn}: {said}"


# --- DVC remotes: clones, their default remote, make push and make pull ------------------------------


def run_remote(repo: Path, action: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m gdpipe.remote <action>` in `repo`: what make push and make pull run, without make's own lines."""
    command = [sys.executable, "-m", "gdpipe.remote", action]
    return subprocess.run(command, cwd=repo, env=env or src_env(), capture_output=True, text=True, timeout=120)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def clone(source: Path, destination: Path) -> Path:
    """A git clone of `source` (committed files only: no outputs, no DVC cache) sharing this checkout's .venv."""
    git(source.parent, "clone", "-q", str(source), str(destination))
    (destination / ".venv").symlink_to(Path(sys.executable).parents[1])
    return destination


def workspace(repo: Path) -> dict[str, bytes]:
    """Every file of `repo` outside .git and DVC's own folder (its cache, its temporary files), with its bytes."""
    skip = (repo / ".git", repo / ".dvc")
    return {
        str(path.relative_to(repo)): path.read_bytes()
        for path in files_under(repo)
        if not any(path.is_relative_to(folder) for folder in skip)
    }


def set_remote(repo: Path, url: str, **settings: str) -> None:
    """This clone's own default remote, as `dvc remote add --local -d` writes it to .dvc/config.local, with
    DVC's verify on as docs/remote.md says (make pull refuses a remote without it) unless `settings` say."""
    lines = ["[core]", "    remote = mine", "['remote \"mine\"']", f"    url = {url}"]
    lines += [f"    {key} = {value}" for key, value in ({"verify": "true"} | settings).items()]
    (repo / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")
