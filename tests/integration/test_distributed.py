"""The torch variant on several processes (train/distributed.py, train/torchrun.py), through the train stage as DVC
runs it: the same bytes at any number of processes and nodes, each rank holding its part of the data only, and
every failure one line with the previous outputs kept."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset
from gdpipe.data import generate
from support import (
    REPO,
    assert_one_error_line,
    committed_md5,
    free_port,
    load_default_params,
    sitecustomize,
    src_env,
    wait_for,
    with_overrides,
    write_yaml,
)

OUTPUTS = ("history/torch.csv", "models/torch.json")
TRAIN = ["--variant", "torch", "--params", "params.yaml", "--data", "data/dataset.npy"]
TRAIN += ["--history", OUTPUTS[0], "--model", OUTPUTS[1]]
NOISY = {"data.x_layout": "uniform", "data.noise_std": 0.5, "train.lr": 1.0}


def folder_with_data(folder: Path, overrides: dict) -> Path:
    """`folder` with params.yaml (the repository's, with overrides) and the data set they describe."""
    folder.mkdir(parents=True)
    write_params(folder, overrides)
    generate(config.load(folder / "params.yaml").data).save(folder / "data" / "dataset.npy")
    return folder


def write_params(folder: Path, overrides: dict) -> None:
    write_yaml(folder / "params.yaml", with_overrides(load_default_params(), overrides))


def hooked_env(tmp_path: Path, ranks: Path | None = None) -> dict[str, str]:
    """A stage's environment that imports this checkout; with `ranks`, ranks report into it (rank_hook)."""
    if ranks is None:
        return src_env()
    hook = sitecustomize(tmp_path / "hook", "rank_hook").parent
    ranks.mkdir(exist_ok=True)
    return src_env(PYTHONPATH=f"{hook}{os.pathsep}{REPO / 'src'}", GDPIPE_TEST_RANKS=str(ranks))


def train(folder: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The train stage of the torch variant as DVC runs it, in `folder`."""
    command = [sys.executable, str(REPO / "stages" / "train.py"), *TRAIN]
    return subprocess.run(command, cwd=folder, env=env or src_env(), capture_output=True, text=True, timeout=timeout)


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def trained(folder: Path, overrides: dict | None = None) -> dict[str, bytes]:
    """The outputs of the train stage run anew in `folder`, with params.yaml rewritten first given `overrides`."""
    if overrides is not None:
        write_params(folder, overrides)
    for name in OUTPUTS:
        (folder / name).unlink(missing_ok=True)
    done = train(folder)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    world = config.load(folder / "params.yaml").train.torch.world_size
    assert json.loads((folder / "history" / "torch.timing.json").read_text())["world_size"] == world
    return outputs(folder)


def test_the_lessons_outputs_are_the_committed_bytes_on_1_to_4_processes(tmp_path):
    """The lesson's 4 points on 4 processes (3 of them with no chunk to sum): dvc.lock's md5s hold."""
    folder = folder_with_data(tmp_path / "lesson", {})
    for processes in (1, 2, 3, 4):
        made = trained(folder, {"train.torch.processes": processes})
        assert {name: hashlib.md5(made[name]).hexdigest() for name in OUTPUTS} == {
            name: committed_md5(name) for name in OUTPUTS
        }, processes


@pytest.mark.parametrize(
    ("n", "epochs", "worlds"),
    [(50_000, 40, (2, 3, 4)), (1_100_000, 6, (2, 3))],  # 4 chunks; 68 chunks, two blocks of rows in one process
)
def test_outputs_are_byte_identical_at_any_number_of_processes(tmp_path, n, epochs, worlds):
    base = {"data.n_samples": n, "train.epochs": epochs, **NOISY}
    folder = folder_with_data(tmp_path / "data", base)
    one = trained(folder)
    for world in worlds:
        assert trained(folder, base | {"train.torch.processes": world}) == one, world
    history = one[OUTPUTS[0]].decode().splitlines()
    assert len(history) == epochs + 1 and float(history[-1].split(",")[1]) == pytest.approx(2.0, abs=0.05)


def test_a_divergence_is_the_same_warning_and_the_same_bytes_on_2_processes(tmp_path):
    base = {"data.n_samples": 50_000, "train.epochs": 200, **NOISY, "train.lr": 4.0}  # the bound is 1/mean(x^2) = 3
    folder = folder_with_data(tmp_path / "data", base)
    warnings, made = [], []
    for processes in (1, 2):
        write_params(folder, base | {"train.torch.processes": processes})
        done = train(folder)
        assert done.returncode == 0
        warnings.append(done.stderr)
        made.append(outputs(folder))
    assert warnings[0] == warnings[1] and warnings[0].startswith("gdpipe: warning: torch diverged at epoch ")
    assert "0 < lr < 3" in warnings[0] and made[0] == made[1]


def start_node(folder: Path, node_rank: int, params: str = "params.yaml") -> subprocess.Popen:
    """`python -m gdpipe.train.torchrun --node-rank K`: another machine's node, here."""
    command = [sys.executable, "-m", "gdpipe.train.torchrun", "--node-rank", str(node_rank), "--params", params]
    return subprocess.Popen(
        command, cwd=folder, env=src_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_node_launches_on_one_machine_give_the_bytes_of_one(tmp_path, reaper):
    """Node 0 is the train stage, node 1 a second launch against its rendezvous on 127.0.0.1: 2 x 2 processes."""
    base = {"data.n_samples": 50_000, "train.epochs": 40, **NOISY}
    folder = folder_with_data(tmp_path / "data", base)
    one = trained(folder)
    nodes = {"train.torch.nodes": 2, "train.torch.processes": 2, "train.torch.rendezvous": f"127.0.0.1:{free_port()}"}
    write_params(folder, base | nodes)
    node = start_node(folder, 1)
    reaper(node)
    two = trained(folder)
    output, _ = node.communicate(timeout=60)
    assert node.returncode == 0, output
    assert two == one


def test_a_node_with_other_params_is_refused_on_every_node_in_one_line(tmp_path, reaper):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 40, **NOISY})
    two_nodes = {"train.torch.nodes": 2, "train.torch.rendezvous": f"127.0.0.1:{free_port()}"}
    write_params(folder, {"data.n_samples": 50_000, "train.epochs": 40, **NOISY} | two_nodes)
    write_yaml(
        folder / "other.yaml",
        with_overrides(load_default_params(), {"data.n_samples": 50_000, **NOISY, **two_nodes, "train.lr": 0.4}),
    )
    node = start_node(folder, 1, params="other.yaml")
    reaper(node)
    done = train(folder)
    node.communicate(timeout=60)
    assert done.returncode == 2 and node.returncode != 0
    assert_one_error_line(done.stderr, "rank 1 trains with other params", "history/torch.csv", "are as they were")
    assert not (folder / "history").exists()


def test_a_rank_killed_mid_training_fails_the_stage_in_one_line_and_keeps_the_previous_outputs(tmp_path, reaper):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 40, **NOISY})
    before = trained(folder)
    write_params(folder, {"data.n_samples": 50_000, **NOISY, "train.epochs": 5_000_000, "train.torch.processes": 2})
    ranks = tmp_path / "ranks"
    command = [sys.executable, str(REPO / "stages" / "train.py"), *TRAIN]
    stage = subprocess.Popen(
        command, cwd=folder, env=hooked_env(tmp_path, ranks), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reaper(stage)
    wait_for(lambda: (ranks / "started-0").exists() and (ranks / "started-1").exists(), stage, what="training")
    time.sleep(0.5)  # a few epochs in
    os.kill(int((ranks / "started-1").read_text()), signal.SIGKILL)
    _, stderr = stage.communicate(timeout=120)
    assert stage.returncode == 2
    assert_one_error_line(stderr, "rank 1 of 2 processes was killed by SIGKILL during training", "are as they were")
    assert outputs(folder) == before
    assert not [path.name for path in folder.rglob("*") if path.name.endswith(".tmp")]
    rank_0 = int((ranks / "started-0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(rank_0, 0)  # torchrun stopped the other rank before the stage ended


def test_the_stage_stopped_mid_training_stops_every_rank_and_keeps_the_previous_outputs(tmp_path, reaper):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 40, **NOISY})
    before = trained(folder)
    write_params(folder, {"data.n_samples": 50_000, **NOISY, "train.epochs": 5_000_000, "train.torch.processes": 2})
    ranks = tmp_path / "ranks"
    command = [sys.executable, str(REPO / "stages" / "train.py"), *TRAIN]
    stage = subprocess.Popen(
        command, cwd=folder, env=hooked_env(tmp_path, ranks), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reaper(stage)
    wait_for(lambda: (ranks / "started-0").exists() and (ranks / "started-1").exists(), stage, what="training")
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=120)
    assert (stage.returncode, stderr) == (143, "gdpipe: terminated (SIGTERM); no output was half-written\n")
    assert outputs(folder) == before
    for rank in (0, 1):
        with pytest.raises(ProcessLookupError):
            os.kill(int((ranks / f"started-{rank}").read_text()), 0)


def test_a_node_that_never_joins_is_waited_for_join_timeout_seconds_then_one_line(tmp_path):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 40, **NOISY})
    port = free_port()
    write_params(
        folder,
        {"data.n_samples": 50_000, **NOISY, "train.torch.nodes": 2, "train.torch.rendezvous": f"127.0.0.1:{port}"}
        | {"train.torch.join_timeout": 3},
    )
    started = time.monotonic()
    done = train(folder)
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert_one_error_line(
        done.stderr,
        f"the 2 nodes did not all join at 127.0.0.1:{port} within train.torch.join_timeout = 3 s",
        "--node-rank",
        "history/torch.csv and models/torch.json are as they were",
    )
    assert not (folder / "history").exists()


def test_a_rendezvous_port_in_use_is_one_line_and_one_machine_needs_no_port(tmp_path):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 10, **NOISY})
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rendezvous = {"train.torch.nodes": 2, "train.torch.rendezvous": f"127.0.0.1:{port}"}
        write_params(folder, {"data.n_samples": 50_000, **NOISY} | rendezvous)
        done = train(folder)
        assert done.returncode == 2
        assert_one_error_line(done.stderr, f"train.torch.rendezvous 127.0.0.1:{port}: the port is in use")
        # One machine: torchrun's standalone rendezvous takes a free port, whatever rendezvous says.
        assert trained(folder, {"data.n_samples": 50_000, **NOISY, **rendezvous, "train.torch.nodes": 1})


def test_a_bad_data_set_is_one_line_from_the_ranks(tmp_path):
    folder = folder_with_data(tmp_path / "data", {"data.n_samples": 50_000, "train.epochs": 10, **NOISY})
    data = folder / "data" / "dataset.npy"
    rows = np.load(data)
    rows[1, 40_000] = np.nan  # in rank 1's chunks only
    Dataset(x=rows[0].copy(), y=rows[1].copy()).save(data)
    write_params(folder, {"data.n_samples": 50_000, **NOISY, "train.torch.processes": 2})
    done = train(folder)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, "data/dataset.npy: x and y must be finite", "are as they were")


def rank_growth(folder: Path, n: int) -> list[int]:
    """Train torch on 2 processes over n points (8n bytes of x and y) in `folder`: by how much each rank's peak
    resident memory (VmHWM) grew from just before it opened the data set."""
    overrides = {"data.n_samples": n, "train.epochs": 3, "train.torch.processes": 2, **NOISY}
    data = folder_with_data(folder / "data", overrides)
    done = train(data, hooked_env(folder, folder / "ranks"))
    assert done.returncode == 0, done.stderr
    shutil.rmtree(data)
    facts = [json.loads((folder / "ranks" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    return [each["peak"] - each["rss_before_data"] for each in facts]


def test_each_rank_holds_its_part_of_the_data_set_not_the_whole(tmp_path):
    """Each rank memory-maps the data set and touches its own chunks only: its memory grows by half the data set
    (on 2 processes) plus what does not depend on the size (autograd's temporaries of one block of chunks, and
    what glibc keeps of them for reuse, up to its trim threshold: 90 to 120 MB measured at 5 x 10^7 points, too
    near a half to tell it from the whole at one size). Two sizes, 2.5 and 7.5 x 10^7 points, tell them apart:
    5 x 10^7 more points (400 MB) add 200 MB to a rank that holds its half, 400 MB to one that holds it all."""
    small, large = 25_000_000, 75_000_000
    extra_bytes = 8 * (large - small)
    for rank, (before, after) in enumerate(
        zip(rank_growth(tmp_path / "small", small), rank_growth(tmp_path / "large", large), strict=True)
    ):
        assert after > 8 * large / 2, (rank, after)  # it did touch its half of the larger data set
        assert 0.35 * extra_bytes < after - before < 0.75 * extra_bytes, (rank, (after - before) / extra_bytes)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL)")
def test_two_gpus_give_the_bytes_of_one(tmp_path):
    """NCCL between 2 GPUs: the same bytes as 1 GPU (CUDA's sums are not CPU's, so not the CPU's bytes)."""
    base = {"data.n_samples": 1_100_000, "train.epochs": 6, "train.torch.device": "cuda", **NOISY}
    folder = folder_with_data(tmp_path / "data", base)
    assert trained(folder) == trained(folder, base | {"train.torch.processes": 2})
