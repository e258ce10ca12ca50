"""Starting the torch variant's training on several processes with torchrun, and saying in one line why it failed.

The train stage runs node 0 (this machine) when train.torch.processes or nodes is above 1:

    python -m torch.distributed.run --standalone --nproc-per-node P -m gdpipe.train.distributed ...   (one machine)
    python -m torch.distributed.run --nnodes N --node-rank 0 --nproc-per-node P --rdzv-endpoint HOST:PORT ...

and every other machine runs its node with `python -m gdpipe.train.torchrun --node-rank K` (docs/distributed.md),
which reads the same params.yaml. torchrun's own output and each process's go to a log folder that lasts as long
as the stage; what the user reads is one line: rank 0's error, or which rank stopped and how.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gdpipe.core import config
from gdpipe.core.command import InputError, run_command
from gdpipe.core.config import TorchParams

# How a rank says that another one stopped answering: a consequence, never the cause.
LOST = "lost the other ranks"
ERROR = "gdpipe: error: "


def torchrun_args(options: TorchParams, node_rank: int) -> list[str]:
    """torchrun's options for node `node_rank`: a standalone rendezvous on one machine, else the static one, whose
    node 0 (rank 0 with it) listens at train.torch.rendezvous and waits join_timeout seconds for the others."""
    processes = ["--nproc-per-node", str(options.processes), "--max-restarts", "0"]
    if options.nodes == 1:
        return ["--standalone", *processes]
    return [
        *("--nnodes", str(options.nodes), "--node-rank", str(node_rank), *processes),
        *("--rdzv-backend", "static", "--rdzv-endpoint", options.rendezvous),
        *("--rdzv-conf", f"timeout={options.join_timeout}"),
    ]


def command(options: TorchParams, node_rank: int, worker_args: Sequence[str], log_dir: str | None = None) -> list[str]:
    """The whole command line of one node: torchrun, then gdpipe.train.distributed and its arguments."""
    logs = ["--log-dir", log_dir, "--redirects", "3"] if log_dir else []
    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(options, node_rank), *logs]
    return [*launcher, "-m", "gdpipe.train.distributed", *worker_args]


def environment(options: TorchParams) -> dict[str, str]:
    """The processes' environment: this one, with the cores shared out among this machine's processes (torchrun
    would set 1 thread each, with a warning) unless OMP_NUM_THREADS says otherwise."""
    threads = str(max(1, (os.cpu_count() or 1) // options.processes))
    return {"OMP_NUM_THREADS": threads} | dict(os.environ)


def train(params_path: str, data_path: str, history_path: str, model_path: str, options: TorchParams) -> None:
    """Train on options.world_size processes; rank 0 writes the history and the model. InputError in one line if
    any process fails: then the outputs are the ones from before."""
    if options.nodes > 1:
        check_port(options.rendezvous)
    worker_args = ["--params", params_path, "--data", data_path, "--history", history_path, "--model", model_path]
    with tempfile.TemporaryDirectory(prefix="gdpipe-torchrun-") as logs:
        launcher_log = Path(logs, "torchrun.log")
        with launcher_log.open("w") as out:
            code = _run(command(options, 0, worker_args, logs), environment(options), stdout=out, stderr=out)
        if code:
            failure = why_failed(Path(logs), launcher_log.read_text(errors="replace"), options)
            raise InputError(f"{failure}; {history_path} and {model_path} are as they were")


def _run(launch: list[str], env: dict[str, str], **output) -> int:
    """Run torchrun and return its exit code; stopped (Ctrl-C, kill), it first stops its processes, then we go on."""
    process = subprocess.Popen(launch, env=env, **output)
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)  # torchrun passes it on to every process and waits for them
        process.wait()
        raise


def check_port(rendezvous: str) -> None:
    """InputError unless node 0 can listen at `rendezvous`: the host must be this machine's, the port free.

    torchrun would find out too, in a traceback; a port taken between this check and torchrun's start is told
    the same way, by why_failed.
    """
    host, _, port = rendezvous.rpartition(":")
    with socket.socket() as probe:
        # As torch's store binds: a port an earlier run left in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(_port_in_use(rendezvous)) from None
            raise InputError(
                f"train.torch.rendezvous {rendezvous}: this machine cannot listen there ({err.strerror}); it must be "
                "an address of this machine, node 0, where the train stage runs"
            ) from None


def _port_in_use(rendezvous: str) -> str:
    return f"train.torch.rendezvous {rendezvous}: the port is in use on this machine; choose a free port for every node"


def why_failed(logs: Path, launcher_output: str, options: TorchParams) -> str:
    """Why torchrun failed, in one line: a rank's own error (its cause, not a rank that only lost the others), else
    the rank torchrun saw stop first and how, else why the nodes never met."""
    errors = {}
    for stderr in logs.glob("*/attempt_*/*/stderr.log"):  # torchrun's layout: <run>/attempt_<n>/<local rank>/
        lines = [line for line in stderr.read_text(errors="replace").splitlines() if line.startswith(ERROR)]
        if lines:
            errors[int(stderr.parent.name)] = lines[-1].removeprefix(ERROR)
    causes = [message for _, message in sorted(errors.items()) if LOST not in message]
    if causes:
        return causes[0]
    where = f"of {options.world_size} processes"
    root = launcher_output.partition("Root Cause")[2]
    rank, code = re.search(r"rank\s*:\s*(\d+)", root), re.search(r"exitcode\s*:\s*(-?\d+)", root)
    if rank and code and int(code[1]) != 2:  # 2: that rank's error, already said
        how = f"was killed by {signal.Signals(-int(code[1])).name}" if int(code[1]) < 0 else f"exited with {code[1]}"
        return f"train torch: rank {rank[1]} {where} {how} during training, so every rank stopped"
    if errors:  # every error here is a lost contact: the cause is on another node
        return f"train torch: {min(errors.items())[1]}; the cause is in the output of the node that stopped"
    if "EADDRINUSE" in launcher_output:  # taken since check_port
        return _port_in_use(options.rendezvous)
    if options.nodes > 1 and not any(logs.glob("*/attempt_*/*/stderr.log")):
        return (
            f"train torch: the {options.nodes} nodes did not all join at {options.rendezvous} within "
            f"train.torch.join_timeout = {options.join_timeout} s: start each other node with "
            "'python -m gdpipe.train.torchrun --node-rank K' (docs/distributed.md)"
        )
    last = next((line for line in reversed(launcher_output.splitlines()) if line.strip()), "no output")
    return f"train torch: torchrun failed ({last.strip()[:200]})"


def main(argv=None):
    """`python -m gdpipe.train.torchrun --node-rank K`: run node K of the training the train stage started on node 0.

    On each machine other than node 0's, from a checkout with the same params.yaml and data set.
    """
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--node-rank", type=int, required=True, help="1 to train.torch.nodes - 1")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/dataset.npy")
    args = parser.parse_args(argv)
    options = config.load(args.params).train.torch
    if not 1 <= args.node_rank < options.nodes:
        raise InputError(
            f"--node-rank {args.node_rank}: {args.params} gives train.torch.nodes = {options.nodes}, so the other "
            f"nodes are 1 to {options.nodes - 1} (node 0 is where the train stage runs)"
        )
    worker = command(options, args.node_rank, ["--params", args.params, "--data", args.data])
    return _run(worker, environment(options))


if __name__ == "__main__":
    run_command(main)
