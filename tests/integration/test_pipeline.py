"""End to end: real `dvc repro` in throwaway copies of the repository."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from support import (
    OUTPUTS,
    PROGRAMS,
    REPO,
    VENV_BIN,
    child_env,
    dvc,
    make,
    set_param,
    sitecustomize,
    stages_run,
    wait_for,
)

ALL_STAGES = {"generate", "train@numpy", "train@torch", "evaluate", "track"}


def test_repro_produces_the_expected_metrics(reproduced_repo):
    metrics = json.loads((reproduced_repo / "metrics.json").read_text())
    for variant in ("numpy", "torch"):
        section = metrics[variant]
        assert section["diverged"] is False and section["epochs_trained"] == 100
        assert section["w"] == pytest.approx(2.0, abs=1e-6)
        assert f"{section['prediction']:.3f}" == "10.000"
        assert section["abs_error"] == pytest.approx(abs(section["prediction"] - 10.0)) and section["abs_error"] < 1e-5
        assert section["w_star_distance"] == pytest.approx(abs(section["w"] - 2.0))
        assert 0 <= section["loss"] < 1e-10
    assert metrics["optimum"] == {"w_star": 2.0, "prediction": 10.0, "true_value": 10.0, "x": 5.0}
    assert 0 <= metrics["parity"]["max_abs_w_diff"] < 1e-6
    history = (reproduced_repo / "history" / "numpy.csv").read_text().splitlines()
    assert history[0] == "epoch,w,loss" and history[1] == "1,0.3,30.0" and len(history) == 101
    assert (reproduced_repo / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_are_deterministic_so_the_committed_lock_holds(reproduced_repo):
    """A fresh checkout's repro reproduces dvc.lock and metrics.json as committed: git status stays clean."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=reproduced_repo, capture_output=True, text=True, check=True
    )
    assert status.stdout == "", (
        "outputs differ from the committed dvc.lock/metrics.json (rerun dvc repro and commit):\n" + status.stdout
    )
    assert json.loads((reproduced_repo / "metrics.json").read_text()) == json.loads((REPO / "metrics.json").read_text())


def test_second_repro_runs_nothing(reproduced_repo):
    done = dvc(reproduced_repo, "repro")
    assert stages_run(done.stdout) == set(), done.stdout


def test_repro_reruns_exactly_what_a_change_touches(own_reproduced_repo):
    repo = own_reproduced_repo

    set_param(repo, "train", "lr", 0.02)
    assert stages_run(dvc(repo, "repro").stdout) == {"train@numpy", "train@torch", "evaluate", "track"}

    set_param(repo, "evaluate", "x", 7.0)
    assert stages_run(dvc(repo, "repro").stdout) == {"evaluate", "track"}
    assert json.loads((repo / "metrics.json").read_text())["optimum"]["true_value"] == 14.0

    # A typo changes no key the trainings declare, but track depends on the whole train section:
    # it reruns, reads the whole file and stops `dvc repro` with one line.
    set_param(repo, "train", "learning_rate", 0.5)
    done = dvc(repo, "repro", check=False)
    assert done.returncode != 0 and stages_run(done.stdout) == {"track"}
    assert (
        "gdpipe: error: params.yaml: unknown key 'train.learning_rate' (allowed here: lr, epochs"
        in done.stderr + done.stdout
    )
    assert "Traceback" not in done.stderr + done.stdout


def test_make_repro_stops_a_bad_params_file_before_dvc_touches_any_output(own_reproduced_repo):
    """DVC removes a stage's outputs before running it; make repro checks params.yaml first, so nothing goes."""
    repo = own_reproduced_repo
    outputs = {
        path: path.read_bytes()
        for path in (repo / "data" / "dataset.npy", repo / "history" / "numpy.csv", repo / "metrics.json")
    }
    set_param(repo, "data", "sead", 1)
    done = make(repo, "repro")
    assert done.returncode == 2 and stages_run(done.stdout) == set()
    gdpipe_lines = [line for line in done.stderr.splitlines() if line.startswith("gdpipe")]
    assert gdpipe_lines == [
        "gdpipe: error: params.yaml: unknown key 'data.sead' "
        "(allowed here: n_samples, true_w, noise_std, seed, x_layout, x_low, x_high)"
    ]
    assert {path: path.read_bytes() for path in outputs} == outputs


def _dvc_stage_commands() -> dict[str, tuple[str, list[str]]]:
    """Each stage's command (with ${item.variant} filled in) and its declared deps."""
    spec = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())
    commands = {}
    for name, stage in spec["stages"].items():
        for variant in stage.get("matrix", {}).get("variant", [None]):
            fill = (lambda s, v=variant: s.replace("${item.variant}", v)) if variant else (lambda s: s)
            address = f"{name}@{variant}" if variant else name
            commands[address] = (fill(stage["cmd"]), [fill(dep) for dep in stage["deps"]])
    return commands


# The heavy libraries (a second or so to import) and the one stage that may import each.
HEAVY_IMPORTS = {"torch": "train@torch", "mlflow": "track", "matplotlib": "evaluate"}


@pytest.mark.parametrize("address", sorted(ALL_STAGES))
def test_each_stage_declares_every_package_module_it_runs(reproduced_repo, tmp_path, address):
    """If a stage ran gdpipe code that no dep of dvc.yaml covers (a file, or a folder holding it), DVC would not
    rerun it when that code changes. And torch, mlflow and matplotlib are imported only by the stage that needs each."""
    cmd, deps = _dvc_stage_commands()[address]
    script, *args = shlex.split(cmd.split("${py}", 1)[1])
    report = tmp_path / "modules.txt"
    env = child_env(PYTHONPATH="src", MODULES_REPORT=str(report))
    probe = [sys.executable, PROGRAMS / "modules_report.py", script, *args]
    subprocess.run(probe, cwd=reproduced_repo, env=env, check=True)
    modules = set(report.read_text().split())
    ran = {_source(name) for name in modules if name.startswith("gdpipe.")}
    assert script in deps
    uncovered = {path for path in ran if not any(path == dep or path.startswith(f"{dep}/") for dep in deps)}
    assert uncovered == set(), f"{address} runs modules no dep in dvc.yaml covers"
    heavy = {library for library, stage in HEAVY_IMPORTS.items() if library in modules}
    assert heavy == {library for library, stage in HEAVY_IMPORTS.items() if stage == address}
    assert dvc(reproduced_repo, "status").stdout.strip() == "Data and pipelines are up to date.", (
        "rerunning a stage changed its outputs"
    )


def _source(module: str) -> str:
    """src/gdpipe/... of a gdpipe module or package, as dvc.yaml names paths."""
    path = Path("src", *module.split("."))
    return str(path / "__init__.py") if (REPO / path).is_dir() else f"{path}.py"


def test_stages_use_the_project_venv_even_from_another_activated_venv(reproduced_repo, tmp_path):
    """A user's own virtualenv first on PATH (with a python that cannot run gdpipe) changes nothing."""
    foreign = tmp_path / "other-venv" / "bin"
    foreign.mkdir(parents=True)
    for name in ("python", "python3"):
        (foreign / name).write_text("#!/bin/sh\necho 'not the project venv' >&2\nexit 97\n")
        (foreign / name).chmod(0o755)
    env = child_env(VIRTUAL_ENV=str(foreign.parent))
    env["PATH"] = f"{foreign}{os.pathsep}{env['PATH']}"
    done = dvc(reproduced_repo, "repro", "--force", "--single-item", "generate", env=env)
    assert stages_run(done.stdout) == {"generate"} and "not the project venv" not in done.stderr


def test_dvc_repro_without_the_venv_says_to_run_make_repro_first(own_reproduced_repo):
    """Not bash's "No such file or directory" (exit 127) but one line; GDPIPE_PYTHON names another environment."""
    repo = own_reproduced_repo
    (repo / ".venv").unlink()  # the copy's symlink to this checkout's venv
    done = dvc(repo, "repro", "--force", "--single-item", "generate", check=False)
    assert done.returncode != 0
    gdpipe_lines = [line for line in done.stderr.splitlines() if line.startswith("gdpipe")]
    assert gdpipe_lines == [
        f"gdpipe: error: no Python at {repo}/.venv/bin/python: run 'make repro' once to create .venv, "
        "or set GDPIPE_PYTHON to a Python with gdpipe's dependencies"
    ]
    done = dvc(repo, "repro", "--force", "--single-item", "generate", env=child_env(GDPIPE_PYTHON=sys.executable))
    assert stages_run(done.stdout) == {"generate"}


# --- interrupted and forced reruns ---------------------------------------------------------


def hashes(repo: Path, names=OUTPUTS) -> dict[str, str]:
    return {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() for name in names}


def test_ctrl_c_during_dvc_repro_leaves_no_partial_output_and_the_next_repro_gives_the_same_metrics(
    reproduced_repo, own_reproduced_repo
):
    """Ctrl-C (SIGINT to dvc and its stage) in the middle of training; then the next `dvc repro` completes with the
    same results.
    """
    repo = own_reproduced_repo
    sitecustomize(repo / "src", "training_started")  # stage commands run with PYTHONPATH=src
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  epochs: 100\n", "  epochs: 3000000\n"))
    started = repo / "started"
    process = subprocess.Popen(
        [str(VENV_BIN / "dvc"), "repro"],
        cwd=repo,
        env=child_env(GDPIPE_TEST_TRAINING_STARTED=str(started)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(started.exists, process, what="training started")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0
    assert (
        stderr.count("gdpipe: interrupted (SIGINT); no output was half-written\n") == 1
        and "Traceback" not in stdout + stderr
    ), stderr
    assert not (
        repo / "history" / "numpy.csv"
    ).exists()  # DVC removed the stage's outputs before running it; none is half-written
    assert not [path for path in repo.rglob("*.tmp") if ".dvc" not in path.parts]
    (repo / "params.yaml").write_text(params)
    (repo / "src" / "sitecustomize.py").unlink()
    dvc(repo, "repro")  # DVC restores train@numpy from its run cache: that result was complete
    assert hashes(repo) == hashes(reproduced_repo)
    assert (repo / "dvc.lock").read_text() == (reproduced_repo / "dvc.lock").read_text()


def test_same_params_give_byte_identical_outputs_on_a_forced_rerun(reproduced_repo, own_reproduced_repo):
    """`dvc repro -f` reruns every stage, in another folder: data, histories, models, metrics, plot and fingerprints are
    the same bytes; only the training times (kept beside the histories for MLflow, out of DVC and git) differ."""
    repo = own_reproduced_repo
    times = [f"history/{variant}.timing.json" for variant in ("numpy", "torch")]
    first_times = hashes(repo, times)
    done = dvc(repo, "repro", "--force")
    assert stages_run(done.stdout) == {"generate", "train@numpy", "train@torch", "evaluate", "track"}
    assert hashes(repo) == hashes(reproduced_repo)
    assert hashes(repo, times) != first_times  # the times did change: they are not part of any hashed output
