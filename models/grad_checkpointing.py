"""Gradient checkpointing of spiking networks: recompute each patch embedding / block in backward.

Spiking neurons carry membrane state and BatchNorm updates running statistics, so a plain
``torch.utils.checkpoint`` would recompute from the wrong state and count the batch twice. Here the
membrane state at entry is restored before the recomputation and BatchNorm statistics are frozen
during it: values and gradients equal the plain model's. Used by ``SpikingModel.set_grad_checkpointing``
and by ``utils.training.fastpath`` (``grad_checkpointing``).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import base as sj_base
from torch.utils.checkpoint import checkpoint

from .neurons import spiking_modules

__all__ = ["block_modules", "enable_grad_checkpointing", "disable_grad_checkpointing"]


def block_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The units to compile or checkpoint one by one: patch embeddings and blocks.

    Found structurally: every child of an ``nn.ModuleList``/``nn.Sequential`` that holds spiking
    neurons, plus every other direct child of ``model`` that holds neurons (embeddings); the
    head LIF alone is left out.
    """
    units = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            for sub_name, sub in child.named_children():
                if any(True for _ in spiking_modules(sub)):
                    units.append((f"{name}.{sub_name}", sub))
        elif any(True for _ in spiking_modules(child)) and not isinstance(child, sj_base.MemoryModule):
            units.append((name, child))
    return units


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Run train-mode BN without touching running stats (used for the recomputation pass)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = running * 1 + batch * 0: bitwise unchanged
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(nbt)


def _checkpointed_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not (block.training and torch.is_grad_enabled()):
        return type(block).forward(block, x)
    neurons = [m for _, m in spiking_modules(block)]
    states = [m._memories["v"] for m in neurons]
    first = [True]

    def run(inp):
        after = [m._memories["v"] for m in neurons]
        for m, v in zip(neurons, states):
            m._memories["v"] = v
        if first[0]:
            first[0] = False
            return type(block).forward(block, inp)
        try:
            with _frozen_bn_stats(block):
                return type(block).forward(block, inp)
        finally:
            # the recomputation's membranes would keep its graph (every recomputed activation)
            # alive until reset_net; keep the forward pass's values. ``finally``: torch stops
            # the recomputation early, by an exception, once the saved tensors are recomputed
            for m, v in zip(neurons, after):
                m._memories["v"] = v

    return checkpoint(run, x, use_reentrant=False)


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute every block / patch embedding of ``model`` in backward; returns the count.

    Uses ``torch.utils.checkpoint`` (non-reentrant) on each unit of :func:`block_modules`.
    Spiking neurons carry state: the membrane state at entry is restored before the
    recomputation, and BatchNorm running statistics are not updated a second time, so values
    and gradients equal the plain model's. Modules and state-dict keys are unchanged.
    """
    n = 0
    for _, unit in block_modules(model):
        if getattr(unit, "_grad_checkpointing", False):
            continue
        unit.forward = functools.partial(_checkpointed_forward, unit)
        unit._grad_checkpointing = True
        n += 1
    return n


def disable_grad_checkpointing(model: nn.Module) -> int:
    """Undo :func:`enable_grad_checkpointing`: every unit runs its own forward again; returns the count."""
    n = 0
    for _, unit in block_modules(model):
        if getattr(unit, "_grad_checkpointing", False):
            del unit.forward  # the instance attribute set by enable_grad_checkpointing
            unit._grad_checkpointing = False
            n += 1
    return n
