"""Spiking neuron factory on spikingjelly 2.0 (``activation_based``, multi-step).

Every spiking layer of every model is built through :class:`NeuronConfig`, so a single
model kwarg (``neuron='lif'|'if'``, ``tau``, ``v_reset``...) reaches all of them.

Defaults reproduce the published neuron: LIF, tau=2, V_th=1, hard reset to 0,
``detach_reset=True``, Sigmoid surrogate with alpha=4 (``H = V + (X - V)/tau``,
spike if ``H >= V_th``).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

__all__ = ["NeuronConfig", "make_neuron", "reset_net", "neuron_implementation", "spiking_modules"]

_logger = logging.getLogger(__name__)

SURROGATES = {
    "sigmoid": sj_surrogate.Sigmoid,
    "atan": sj_surrogate.ATan,
    "piecewise_quadratic": sj_surrogate.PiecewiseQuadratic,
}
NEURON_KINDS = ("lif", "if")


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """Hyper-parameters shared by every spiking neuron of a model.

    ``v_reset=None`` selects the soft (subtractive) reset of the paper's Eq. 3;
    a float selects a hard reset to that value (the published code: 0.0).
    """

    kind: str = "lif"
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    alpha: float = 4.0

    def __post_init__(self):
        if self.kind not in NEURON_KINDS:
            raise ValueError(f"unknown neuron {self.kind!r}: choose one of {NEURON_KINDS}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.surrogate!r}: choose one of {tuple(SURROGATES)}")
        if self.kind == "lif" and not self.tau > 1.0:
            raise ValueError(f"LIF needs tau > 1 (beta = 1 - 1/tau in [0, 1)), got tau={self.tau}")

    @classmethod
    def from_kwargs(cls, neuron: "str | NeuronConfig" = "lif", **kwargs) -> "NeuronConfig":
        """Build from model kwargs: ``neuron`` is a kind name or a ready config."""
        if isinstance(neuron, NeuronConfig):
            return dataclasses.replace(neuron, **kwargs) if kwargs else neuron
        return cls(kind=neuron, **kwargs)

    def make(self, v_threshold: Optional[float] = None) -> nn.Module:
        """A fresh multi-step neuron (input ``[T, ...]``); ``v_threshold`` overrides the default."""
        common = dict(
            v_threshold=self.v_threshold if v_threshold is None else v_threshold,
            v_reset=self.v_reset,
            surrogate_function=SURROGATES[self.surrogate](alpha=self.alpha),
            detach_reset=self.detach_reset,
            step_mode="m",
        )
        if self.kind == "lif":
            return sj_neuron.LIFNode(tau=self.tau, decay_input=True, **common)
        return sj_neuron.IFNode(**common)


def make_neuron(cfg: Optional[NeuronConfig] = None, v_threshold: Optional[float] = None) -> nn.Module:
    """Shorthand for ``(cfg or NeuronConfig()).make(v_threshold)``."""
    return (cfg or NeuronConfig()).make(v_threshold)


def spiking_modules(model: nn.Module):
    """Yield ``(name, module)`` for every spikingjelly neuron in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, (sj_neuron.LIFNode, sj_neuron.IFNode)):
            yield name, m


def reset_net(model: nn.Module) -> None:
    """Reset the membrane state of every neuron (call after each step / eval batch)."""
    sj_functional.reset_net(model)


def neuron_implementation(kind: str = "lif", device: "torch.device | str" = "cpu") -> str:
    """Name of the spikingjelly kernel that runs ``kind`` neurons on ``device``.

    CPU: spikingjelly's registered CPU operator (``torch.ops.sj_<kind>``).
    CUDA: whatever spikingjelly selected (``cuda`` native kernels, ``triton`` or ``torch``).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"spikingjelly {kind} cpu-op (torch.ops.sj_{kind})"
    try:
        info = sj_functional.neuron_implementation(kind, device)
    except Exception as err:  # report, never crash a run over a log line
        return f"spikingjelly {kind} on {device}: selection failed ({err})"
    return f"spikingjelly {kind} {info['implementation']} ({torch.cuda.get_device_name(device)})"
