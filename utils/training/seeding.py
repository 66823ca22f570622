"""Seeding for exact replay: per-epoch seeds, DataLoader workers, and per-sample seeds that make augmentations
depend only on (run seed, epoch, sample), not on which worker loads a sample."""
from __future__ import annotations

import random
import signal

import numpy as np
import torch

__all__ = ["seed_everything", "epoch_seed", "seed_worker", "SeededDistributedSampler", "SampleSeededDataset"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank): epochs replay exactly after a resume."""
    return int(np.random.SeedSequence([int(seed) % (2**32), epoch, rank]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy/python RNGs follow the torch seed of the worker.

    Workers ignore the stop signals (Ctrl-C and schedulers signal every process of the job): the main
    process stops the run cleanly and then shuts its workers down.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


class SeededDistributedSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that can also hand each index a seed drawn from (seed, epoch, index).

    With ``with_seeds`` it yields ``(index, sample_seed)`` for :class:`SampleSeededDataset`: random
    augmentations then depend only on the run seed, the epoch and the sample, not on which worker
    process loads it or what that worker did before (persistent workers, exact resume).
    """

    def __init__(self, *args, with_seeds: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.with_seeds = with_seeds
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch``; its first ``skip`` indices are left out (resuming inside the epoch)."""
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = super().__iter__()
        if self.skip:
            indices = iter(list(indices)[self.skip:])
        if not self.with_seeds:
            return indices
        base = int(np.random.SeedSequence([int(self.seed) % (2**32), int(self.epoch), 0x5EED]).generate_state(1)[0])
        return ((i, (base + i) % (2**32)) for i in indices)


class SampleSeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset indexed by ``(index, seed)``: seeds torch, numpy and python RNGs, then loads."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        return self.dataset[index]
