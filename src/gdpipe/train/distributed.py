"""The torch variant on several processes: what each process torchrun starts runs (one rank).

    torchrun --standalone --nproc-per-node 2 -m gdpipe.train.distributed --params params.yaml \
        --data data/dataset.npy --history history/torch.csv --model models/torch.json

The train stage starts it (gdpipe.train.torchrun). Each rank:
  1. joins the others (torch.distributed: gloo on CPU, NCCL on GPUs), and checks that every rank trains
     with the same params and the same number of points;
  2. memory-maps the data set and reads only its own chunks (gdpipe.train.chunks.shard);
  3. runs the torch variant's step on them each epoch: forward, loss, backward() per chunk, then sends its
     chunks' losses and gradients to every rank (all_gather, which adds nothing), and adds all the chunks'
     in chunk order; so every rank takes the same step, with the bits one process would take;
  4. rank 0 writes the history and the model, once every rank has finished the last epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from gdpipe.core import config
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError, run_command
from gdpipe.train import chunks, save
from gdpipe.train.loop import fit
from gdpipe.train.torch_variant import TorchStepper, resolve_device
from gdpipe.train.torchrun import LOST


class AllGather:
    """Every rank's chunk parts -> all chunks' parts, in chunk order, on every rank.

    all_gather moves numbers without adding them; ranks hold contiguous runs of chunks, rank by rank, so
    putting the runs side by side is chunk order. A rank with fewer chunks pads its run to the longest.
    """

    def __init__(self, n: int, world: int, device: torch.device) -> None:
        self.counts = [len(chunks.shard_chunks(n, world, rank)) for rank in range(world)]
        self.sent = torch.zeros((max(self.counts), 2), dtype=torch.float64, device=device)
        self.received = [torch.empty_like(self.sent) for _ in range(world)]
        self.epoch = 0

    def __call__(self, parts: torch.Tensor) -> torch.Tensor:
        self.epoch += 1
        self.sent[: len(parts)] = parts
        try:
            dist.all_gather(self.received, self.sent)
        except RuntimeError as err:  # gloo and NCCL say a rank is gone as RuntimeError; the cause is that rank's
            raise InputError(f"{LOST} at epoch {self.epoch} ({str(err).split('. ')[0]})") from None
        return torch.cat([run[:count] for run, count in zip(self.received, self.counts, strict=True)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="the .npy written by generate")
    parser.add_argument("--history", help="the CSV rank 0 writes (on the node the train stage started)")
    parser.add_argument("--model", help="the JSON rank 0 writes")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    options = params.train.torch
    device = resolve_device(options.device)
    if device.type == "cuda":  # one GPU per process on each machine
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"train.torch.processes = {options.processes} but this machine has {torch.cuda.device_count()} GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # The timeout bounds every wait for another rank: joining, and each epoch's exchange.
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=options.join_timeout)
    )
    try:
        train(args, params, device)
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace, params: config.Params, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not (args.history and args.model):
        raise InputError("rank 0 writes the outputs: start node 0 with --history and --model (the train stage does)")
    data = Dataset.open(args.data)
    n = data.x.size
    shard = data.part(args.data, *chunks.shard(n, world, rank))
    agree(params, n, bool(shard.x.any()), device, args.data)
    stepper = TorchStepper(shard, params.train, n=n, gather=AllGather(n, world, device), device=device)
    started_ms = time.time_ns() // 1_000_000
    history = fit(stepper, params.train.epochs, params.train.log_every, label=f"train torch, rank {rank} of {world}")
    finished_ms = time.time_ns() // 1_000_000
    if rank == 0:  # the last epoch's exchange has heard from every rank: training is complete
        save("torch", history, params, (args.history, args.model), started_ms, finished_ms, world)


def agree(params: config.Params, n: int, some_x: bool, device: torch.device, data_path: str) -> None:
    """InputError on every rank unless all train with the same params and data set size, and some x is not 0.

    Each node reads its own params.yaml and data set; ranks that took different steps would never meet again.
    """
    setup = json.dumps([config.values(params, config.training_keys("torch")), n], sort_keys=True)
    mine = torch.tensor([*hashlib.sha256(setup.encode()).digest(), some_x], dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    differ = [rank for rank, theirs in enumerate(everyone) if not torch.equal(theirs[:-1], everyone[0][:-1])]
    if differ:
        raise InputError(
            f"rank {differ[0]} trains with other params or another data set size than rank 0 ({len(differ)} ranks "
            "differ): every node must have the same params.yaml and data set"
        )
    if not any(bool(theirs[-1]) for theirs in everyone):
        raise InputError(f"{data_path}: every x is 0, so w cannot be fitted (rerun the generate stage: dvc repro)")


if __name__ == "__main__":
    run_command(main)
