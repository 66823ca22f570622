"""torchrun / DDP helpers: one code path for 1 process, many GPUs, or CPU processes (gloo).

Run ``torchrun --nproc_per_node N train.py ...``; torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and
:func:`init_distributed` picks them up. Without them the run is a single process.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistInfo", "init_distributed", "resolve_device", "is_main", "barrier", "all_reduce_sum",
           "broadcast_object", "cleanup", "ShardSampler"]


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""
    threads: Any = None  # the process's utils.training.threads.ThreadPolicy, set by train.py

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if there is a usable one, else CPU (one warning line when torch has CUDA
    built in). ``cuda`` -> ``cuda:<local_rank>``; a RuntimeError says why CUDA is unusable (no driver, driver
    too old for this build, architecture not supported, torch without CUDA) and how to run on the CPU."""
    from utils.training.cuda_env import cuda_problem

    name = (name or "auto").lower()
    if name == "auto":
        problem = cuda_problem(local_rank)
        if problem is not None and torch.version.cuda and local_rank == 0:
            print(f"warning: device auto: running on the CPU, CUDA is unusable: {problem.split(';')[0]}",
                  file=sys.stderr, flush=True)
        name = "cpu" if problem else "cuda"
    if name.startswith("cuda"):
        index = int(name.split(":", 1)[1]) if ":" in name else local_rank
        problem = cuda_problem(index)
        if problem is not None:
            raise RuntimeError(f"device '{name}' requested but CUDA is unusable: {problem}")
        return torch.device("cuda", index % torch.cuda.device_count() if ":" not in name else index)
    if name != "cpu":
        raise RuntimeError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; otherwise a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, "")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kw)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, backend)


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (no-op for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def cleanup(together: bool = False) -> None:
    """Leave the process group. ``together``: every rank is known to be exiting at this point (success, or an
    error all ranks share): they wait for each other first, because rank 0 hosts the rendezvous store and a rank
    still tearing down when rank 0 has exited aborts (SIGABRT) instead of exiting with its code. Never after an
    error of one rank only: the others would never arrive."""
    if dist.is_available() and dist.is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


class ShardSampler(Sampler):
    """Evaluation sampler: rank r reads samples r, r+W, r+2W... — no padding, so no sample counts twice.

    (``DistributedSampler`` pads with repeated samples, which biases distributed accuracy.)
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
