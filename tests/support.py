"""Plain helpers (no pytest) shared by the tests, through conftest.py, and by `make bench`: throwaway
copies of the repository, params files with overrides, child processes and their environments, the
stages run in this process, the track stage in this process or as a child, a look into a sqlite MLflow
store, and the lesson's metrics for the gate. Racing promotions: promotions.py; DVC remotes: remotes.py;
programs the tests run as children: programs/.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from unittest import mock

from ruamel.yaml import YAML

from gdpipe.core.command import run_main

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROGRAMS = REPO / "tests" / "programs"  # Python programs the tests run as children
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


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    """Set `section.key` in `repo`'s params.yaml, keeping its comments (ruamel's round trip)."""
    yaml = YAML()
    path = repo / "params.yaml"
    document = yaml.load(path)
    document[section][key] = value
    yaml.dump(document, path)


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


def sitecustomize(folder: Path, hook: str) -> Path:
    """tests/programs/<hook>.py as `folder`/sitecustomize.py: a Python with `folder` on its path runs it at start."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(PROGRAMS / f"{hook}.py", folder / "sitecustomize.py"))


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


def assert_one_error_line(stderr: str, *names: str) -> None:
    """Exactly one line, `gdpipe: error: ...`, that mentions every one of `names`; never a traceback."""
    assert stderr.startswith("gdpipe: error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), stderr[:2000]
    assert "Traceback" not in stderr
    for name in names:
        assert name in stderr, (name, stderr[:2000])


def strict_json(path: Path):
    """The JSON document in `path`; a NaN or an infinity in it fails the test (Python's json would read them)."""
    return json.loads(
        path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(f"{path}: {name}"))
    )


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


# --- the track stage: in this process, or as a child ------------------------------------------------
# In this process (track_here) where a test looks at what it publishes: no child's two seconds of importing
# MLflow. As a child (start_track, run_track) where a test looks at what a whole process prints, start-up
# included, or stops it, or runs many at once.


def track_here(folder: Path, uri: str) -> tuple[int, str]:
    """The track stage run in this process in `folder` (a finished workspace), publishing to `uri`: its exit
    code and stderr."""
    with mock.patch.dict(os.environ, MLFLOW_TRACKING_URI=uri), contextlib.chdir(folder):
        return run_stage(stage("track").main, TRACK_ARGS)


def start_track(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    """The track stage started as a child process in `folder` (a finished workspace), with `env`: its stdout and
    stderr are pipes, to read with communicate()."""
    command = [sys.executable, str(REPO / "stages" / "track.py"), *TRACK_ARGS]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_track(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The same, run to its end: its exit code and output."""
    process = start_track(folder, env)
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


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
