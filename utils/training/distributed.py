"""torchrun / DDP helpers: one code path for 1 process, many GPUs, or CPU processes (gloo).

Run ``torchrun --nproc_per_node N train.py ...``; torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and
:func:`init_distributed` picks them up. Without them the run is a single process.

Start-up never waits in silence: a process still connecting to the others after :data:`WAIT_NOTICE_S`
seconds says what it waits for (rank 0's store at MASTER_ADDR:MASTER_PORT, who set them) and how to fix
it, and gives up after ``timeout_s`` (train.py's ``--dist-timeout``) with :class:`DistSetupError`; the
collectives keep torch's 30-minute timeout. Under torchrun, :func:`elastic_restart` tells a restarted
worker which launch it belongs to (train.py then continues the run from its last checkpoint).
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import socket
import sys
import threading
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from utils.training.cuda_env import cuda_problem

__all__ = ["DistInfo", "DistSetupError", "init_distributed", "elastic_restart", "resolve_device", "is_main",
           "barrier", "all_reduce_sum", "broadcast_object", "cleanup", "ShardSampler"]

WAIT_NOTICE_S = 10.0  # a process still connecting after this long says what it waits for
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default, for every collective after start-up


class DistSetupError(RuntimeError):
    """The processes of a run could not connect to each other within the start-up timeout."""


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


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 300) -> DistInfo:
    """Initialise the process group when launched by torchrun; otherwise a single-process DistInfo.

    Connecting to the other processes may take ``timeout_s`` seconds (then :class:`DistSetupError` naming
    what was waited for and the fix); a notice after :data:`WAIT_NOTICE_S` seconds says the same meanwhile."""
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
        rank = os.environ.get("RANK", "?")
        for warning in (interface_warning(backend), shared_store_warning() if rank == "0" else None):
            if warning:
                print(f"warning: rank {rank}: {warning}", file=sys.stderr, flush=True)
        notice = threading.Timer(WAIT_NOTICE_S, lambda: print(f"rank {rank}: {waiting_for(backend, timeout_s)}",
                                                              file=sys.stderr, flush=True))
        notice.daemon = True
        notice.start()
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
        except (RuntimeError, TimeoutError, ValueError) as err:  # c10d's DistError is a RuntimeError
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise DistSetupError(f"rank {rank} could not connect to the run's other processes within "
                                 f"--dist-timeout {timeout_s:g} s through rank 0's store at {_store_address()} "
                                 f"({first}). {_fix(backend)}") from None
        finally:
            notice.cancel()
        dist.set_timeout(COLLECTIVE_TIMEOUT)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, backend)


def _store_address() -> str:
    """``MASTER_ADDR:MASTER_PORT``, with what the name resolves to on this host."""
    addr, port = os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
    try:
        resolved = sorted({a[4][0] for a in socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return f"{addr}:{port} (a name this host cannot resolve)"
    return f"{addr}:{port}" + (f" (here {', '.join(resolved)})" if resolved != [addr] else "")


def _fix(backend: str) -> str:
    ifname = "NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME"
    return ("Check that every node of the run is up and that this address leads to node 0 from here: on clusters "
            "with several networks start torchrun with --local-addr <this node's address on the network the nodes "
            f"share> on every node and set {ifname}=<that network's interface>; the port must not be firewalled.")


def waiting_for(backend: str, timeout_s: float) -> str:
    """What a connecting process waits for, who set it, when it gives up, and how to fix the usual causes."""
    who = ("set by torchrun: node 0's --local-addr, else its host name" if "TORCHELASTIC_RUN_ID" in os.environ
           else "set in the environment")
    return (f"still connecting to the run's other processes through rank 0's store at {_store_address()} "
            f"(MASTER_ADDR:MASTER_PORT, {who}); giving up after --dist-timeout {timeout_s:g} s. {_fix(backend)}")


def interface_warning(backend: str) -> Optional[str]:
    """Across nodes, gloo listens on the address this host's name resolves to: a loopback one (and no
    ``GLOO_SOCKET_IFNAME``) cannot be reached from the other nodes."""
    local, world = int(os.environ.get("LOCAL_WORLD_SIZE", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if backend != "gloo" or os.environ.get("GLOO_SOCKET_IFNAME") or not 0 < local < world:
        return None
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return None
    if addrs and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        return (f"this host's name ({socket.gethostname()}) resolves to {', '.join(sorted(addrs))}, a loopback "
                "address, where gloo would listen out of the other nodes' reach: set GLOO_SOCKET_IFNAME to the "
                "interface of the network the nodes share (see `ip -br addr`)")
    return None


def shared_store_warning() -> Optional[str]:
    """torchrun may restart the workers, and they share its rendezvous store (torch's default since 2.4): a
    restarted worker can read the previous attempt's addresses there and fail to connect, every restart."""
    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) == 0):
        return None
    return ("torchrun --max-restarts > 0 with the workers on torchrun's own store: a restart can meet the previous "
            "attempt's addresses there and fail to connect. Export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before "
            "torchrun (docs/training.md, 'Many nodes') so that every attempt gets a fresh store")


def elastic_restart() -> Optional[str]:
    """Under torchrun after it restarted the workers (``TORCHELASTIC_RESTART_COUNT`` > 0 on any rank): the
    launch's id (``TORCHELASTIC_RUN_ID``); else None. Every rank calls it (a collective)."""
    nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
    count = torch.tensor([int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)],
                         device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
    if int(all_reduce_sum(count).item()) == 0:
        return None
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


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
