"""train/torchrun.py without starting torchrun: the command lines of node 0 and the others, and the one line a failed
run becomes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gdpipe.core.command import InputError
from gdpipe.train import torchrun
from support import assert_one_error_line, run_stage, with_overrides, write_yaml


def options(params, **torch_options):
    return params({f"train.torch.{key}": value for key, value in torch_options.items()}).train.torch


def test_one_machine_is_torchruns_standalone_rendezvous(params):
    assert torchrun.torchrun_args(options(params, processes=3), 0) == [
        *("--standalone", "--nproc-per-node", "3", "--max-restarts", "0")
    ]


def test_several_machines_meet_at_node_0s_static_rendezvous(params):
    opts = options(params, processes=2, nodes=2, rendezvous="10.0.0.5:29400", join_timeout=90)
    launch = torchrun.command(opts, 1, ["--params", "params.yaml"])
    assert launch[1:4] == ["-m", "torch.distributed.run", "--nnodes"]
    assert " ".join(launch[4:]) == (
        "2 --node-rank 1 --nproc-per-node 2 --max-restarts 0 --rdzv-backend static --rdzv-endpoint 10.0.0.5:29400 "
        "--rdzv-conf timeout=90 -m gdpipe.train.distributed --params params.yaml"
    )


def rank_logs(tmp_path: Path, stderr_by_rank: dict[int, str]) -> Path:
    """A log folder laid out as torchrun's --log-dir: <run>/attempt_0/<local rank>/stderr.log."""
    for rank, text in stderr_by_rank.items():
        folder = tmp_path / "run_abc" / "attempt_0" / str(rank)
        folder.mkdir(parents=True)
        (folder / "stderr.log").write_text(text)
    return tmp_path


ROOT_CAUSE = """
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_17:44:50
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 11244)  (SIGKILL)
"""


def test_a_ranks_own_error_is_the_cause_not_the_lost_contact_of_the_others(tmp_path, params):
    logs = rank_logs(
        tmp_path,
        {
            0: f"gdpipe: error: {torchrun.LOST} at epoch 3 (Connection reset by peer)\n",
            1: "[rank1]: noise\ngdpipe: error: data/dataset.npy: x and y must be finite\n",
        },
    )
    assert torchrun.why_failed(logs, ROOT_CAUSE, options(params, processes=2)) == (
        "data/dataset.npy: x and y must be finite"
    )


def test_a_rank_that_died_without_a_word_is_named_with_its_signal(tmp_path, params):
    logs = rank_logs(tmp_path, {0: f"gdpipe: error: {torchrun.LOST} at epoch 3 (Read error)\n", 1: ""})
    assert torchrun.why_failed(logs, ROOT_CAUSE, options(params, processes=2)) == (
        "train torch: rank 1 of 2 processes was killed by SIGKILL during training, so every rank stopped"
    )
    exited = ROOT_CAUSE.replace("exitcode  : -9", "exitcode  : 1")
    assert "rank 1 of 2 processes exited with 1 during training" in torchrun.why_failed(
        logs, exited, options(params, processes=2)
    )


def test_lost_contact_alone_points_at_the_other_node(tmp_path, params):
    logs = rank_logs(tmp_path, {0: f"gdpipe: error: {torchrun.LOST} at epoch 7 (Connection reset by peer)\n"})
    failure = torchrun.why_failed(logs, "", options(params, processes=1, nodes=2))
    assert failure.startswith(f"train torch: {torchrun.LOST} at epoch 7") and "node that stopped" in failure


def test_a_port_taken_after_the_check_is_told_as_in_use(tmp_path, params):
    output = "torch.distributed.DistNetworkError: ... port: 29401, useIpv6: false, code: -98, name: EADDRINUSE, ..."
    opts = options(params, processes=1, nodes=2, rendezvous="127.0.0.1:29401")
    assert "127.0.0.1:29401: the port is in use" in torchrun.why_failed(tmp_path, output, opts)


def test_check_port_refuses_a_port_in_use_and_an_address_of_another_machine():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"127.0.0.1:{port}: the port is in use"):
            torchrun.check_port(f"127.0.0.1:{port}")
    with pytest.raises(InputError, match="must be an address of this machine, node 0"):
        torchrun.check_port("192.0.2.1:29400")  # TEST-NET-1: never this machine's
    torchrun.check_port(f"127.0.0.1:{port}")  # free again


@pytest.mark.parametrize("node_rank", [0, 2, -1])
def test_another_nodes_launch_refuses_a_node_rank_params_do_not_have(tmp_path, node_rank):
    from support import load_default_params

    params = write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"train.torch.nodes": 2}))
    code, stderr = run_stage(torchrun.main, ["--node-rank", str(node_rank), "--params", str(params)])
    assert code == 2
    assert_one_error_line(stderr, f"--node-rank {node_rank}", "train.torch.nodes = 2", "1 to 1")
