"""Data-parallel runs under torchrun, with torch.distributed (no engine of our own).

    torchrun --nproc_per_node=8 -m harness run zero_shot --profile full            # one node, 8 GPUs
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:29500 -m harness run linear_probe --profile full  # two nodes (run on each)

One process per GPU with NCCL, or per CPU worker with gloo. The runner splits a suite's work in one of two
ways, chosen by the evaluator (its PARALLEL attribute):
  "units"  each rank runs every world_size-th unit (a model, a training run); rank 0 gathers the rows.
  "data"   every rank takes part in every unit; inside it, feature extraction shards the images
           (rank r takes positions r, r + W, r + 2W, ...: disjoint, none lost when the size does not divide
           by W) and all-gathers the features back into data-set order, so what follows sees the same
           features as a single process.
Only rank 0 reads and writes the caches' decisions and writes tables, once every rank has finished. A rank
that raises ends its process; torchrun then stops the others and reports the failing rank, and no table has
been written; finished units and feature chunks stay cached for the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

_DATA_PARALLEL = False  # True while the runner executes a unit of a "data"-parallel evaluator


def init_from_env() -> torch.device | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's GPU, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    # share the machine's cores between the processes on it instead of oversubscribing them
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return None


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a unit that every rank runs together (so collectives are allowed)."""
    return _DATA_PARALLEL and world_size() > 1


@contextlib.contextmanager
def data_parallel() -> Iterator[None]:
    global _DATA_PARALLEL
    previous, _DATA_PARALLEL = _DATA_PARALLEL, True
    try:
        yield
    finally:
        _DATA_PARALLEL = previous


def shard(n: int) -> slice:
    """This rank's positions among n items: r, r + W, r + 2W, ... (disjoint, all covered)."""
    return slice(rank(), n, world_size())


def all_gather(obj) -> list:
    """obj from every rank, in rank order (a list of one outside a process group)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    """Rank src's obj on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
