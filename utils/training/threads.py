"""CPU thread policy: use the cores other processes leave free, and follow them as they come and go.

PyTorch's CPU kernels split every operation evenly over its OpenMP threads and wait for the slowest.
When another process holds one of two cores, the thread that shares that core runs at half speed and
every operation waits for it: two threads then run several times slower than one. So the number of
threads follows the cores *other* processes leave free, measured from ``/proc/stat`` (all CPU time
of the machine) minus ``/proc/self/stat`` (this process's own time) — our own threads never count
against us. An explicit count (``OMP_NUM_THREADS`` or a ``threads`` setting) is kept as given.

    policy = ThreadPolicy.start(requested=cfg.threads)   # sets torch's thread count
    for step in ...:
        policy.update()                                  # cheap; re-measures every ``interval`` seconds
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Tuple

import torch

__all__ = ["ThreadPolicy", "usable_cpus", "read_cpu_times", "loader_workers"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def loader_workers(device_type: str, local_processes: int = 1, cpus: Optional[int] = None) -> int:
    """DataLoader workers per training process when the config leaves ``workers`` unset: on CUDA every core of
    the process's share of the machine but one (which feeds the GPU), at most 16; on the CPU, where workers
    take cores from training, one fewer than the share and at most 4."""
    share = max(1, (cpus or usable_cpus()) // max(1, local_processes))
    return min(share - 1, 16 if device_type == "cuda" else 4)


def read_cpu_times() -> Optional[Tuple[float, float]]:
    """``(busy seconds of the whole machine, seconds of this process)`` since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / _CLK_TCK, (int(own[11]) + int(own[12])) / _CLK_TCK  # utime + stime of all threads


class ThreadPolicy:
    """Chooses torch's CPU thread count from the cores other processes leave free.

    Args:
        requested: an explicit thread count (kept as given), or None/0 for automatic.
        world_size: processes of this run on the machine; above 1 each gets a fixed, even share of the CPUs.
        interval: seconds between measurements during training.
        reader/clock/setter: injectable for tests (default: /proc, ``time.monotonic``, ``torch.set_num_threads``).
    """

    def __init__(self, requested: Optional[int] = None, world_size: int = 1, interval: float = 5.0,
                 reader: Callable[[], Optional[Tuple[float, float]]] = read_cpu_times,
                 clock: Callable[[], float] = time.monotonic, setter: Callable[[int], None] = torch.set_num_threads,
                 cpus: Optional[int] = None):
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        self.cpus = cpus or usable_cpus()
        self.world_size = max(1, world_size)
        # several processes of one run would count each other as "others": they share the CPUs evenly
        self.fixed = bool(requested) or env.isdigit() or self.world_size > 1
        self.interval = interval
        self._reader, self._clock, self._setter = reader, clock, setter
        self._last = None  # (clock, machine busy s, own s) at the previous measurement
        self._pending = None  # a new count seen once; applied when the next measurement agrees
        self.changes = []  # (clock, threads, cores used by others) for the run's log
        self.threads = int(requested) if requested else (int(env) if env.isdigit() else self._share(self.cpus))
        self.others = 0.0

    @classmethod
    def start(cls, requested: Optional[int] = None, world_size: int = 1, probe: float = 0.3,
              **kwargs) -> "ThreadPolicy":
        """A policy whose first count comes from a short measurement (``probe`` seconds), applied at once."""
        policy = cls(requested, world_size, **kwargs)
        if not policy.fixed:
            policy._sample()  # the baseline
            time.sleep(probe)
            others = policy._sample()
            if others is not None:
                policy.threads = policy._threads_for(others)
        policy._setter(policy.threads)
        return policy

    def describe(self) -> str:
        """One line for the run's banner."""
        if self.fixed:
            return f"{self.threads} (fixed)"
        return (f"{self.threads} of {self.cpus} usable CPUs (automatic: cores left free by other processes, "
                f"{self.others:.1f} busy at start; re-measured every {self.interval:g} s)")

    def update(self) -> Optional[int]:
        """Re-measure when ``interval`` has passed; returns the new thread count when it changed."""
        if self.fixed or (self._last is not None and self._clock() - self._last[0] < self.interval):
            return None
        others = self._sample()
        if others is None:
            return None
        wanted = self._threads_for(others)
        if wanted == self.threads:
            self._pending = None
            return None
        if self._pending != wanted:  # one noisy reading does not move the count
            self._pending = wanted
            return None
        self._pending = None
        self.threads = wanted
        self._setter(wanted)
        self.changes.append((self._clock(), wanted, others))
        return wanted

    def _share(self, free: int) -> int:
        return max(1, free // self.world_size)

    def _threads_for(self, others: float) -> int:
        self.others = others
        # a core counts as taken when others use more than half of it
        return max(1, self.cpus - int(others + 0.5))

    def _sample(self) -> Optional[float]:
        """Cores used by other processes since the previous sample (None on the first call / off Linux)."""
        times = self._reader()
        if times is None:
            return None
        now = self._clock()
        last, self._last = self._last, (now, *times)
        if last is None or now <= last[0]:
            return None
        return max(0.0, ((times[0] - last[1]) - (times[1] - last[2])) / (now - last[0]))
