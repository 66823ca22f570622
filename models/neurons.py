"""Spiking neuron factory on spikingjelly 2.0 (``activation_based``, multi-step).

Every spiking layer of every model is built through :class:`NeuronConfig`, so a single
model kwarg (``neuron='lif'|'if'``, ``tau``, ``v_reset``...) reaches all of them.

Defaults reproduce the published neuron: LIF, tau=2, V_th=1, hard reset to 0,
``detach_reset=True``, Sigmoid surrogate with alpha=4 (``H = V + (X - V)/tau``,
spike if ``H >= V_th``).

Interchangeable implementations of the same maths (``NeuronConfig.impl``):
``'spikingjelly'`` (default) runs spikingjelly's registered kernels (CPU operator, CUDA/Triton);
``'torch'`` runs a plain PyTorch time loop (:class:`TorchLIFNode`, :class:`TorchIFNode`) that
``torch.compile`` can fuse with the surrounding layers; ``'triton'`` always runs spikingjelly's
Triton kernels (:mod:`models.triton_neurons`; on CPU tensors in Triton's interpreter, under
``TRITON_INTERPRET=1``). Spikes are bitwise identical on CPU; gradients agree to a few ulp
(the kernels multiply in different orders).
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

from .triton_neurons import TritonIFNode, TritonLIFNode
from .triton_neurons import describe as describe_triton

__all__ = [
    "NeuronConfig",
    "make_neuron",
    "reset_net",
    "neuron_implementation",
    "spiking_modules",
    "TorchLIFNode",
    "TorchIFNode",
    "TritonLIFNode",
    "TritonIFNode",
    "convert_neurons",
]

_logger = logging.getLogger(__name__)

SURROGATES = {
    "sigmoid": sj_surrogate.Sigmoid,
    "atan": sj_surrogate.ATan,
    "piecewise_quadratic": sj_surrogate.PiecewiseQuadratic,
}
NEURON_KINDS = ("lif", "if")
NEURON_IMPLS = ("spikingjelly", "torch", "triton")


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """Hyper-parameters shared by every spiking neuron of a model.

    ``v_reset=None`` (or ``'soft'``, which survives ``timm.create_model``'s dropping of None
    kwargs) selects the soft (subtractive) reset of the paper's Eq. 3; a float selects a hard
    reset to that value (the published code: 0.0).
    """

    kind: str = "lif"
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    alpha: float = 4.0
    impl: str = "spikingjelly"

    def __post_init__(self):
        if self.v_reset == "soft":
            object.__setattr__(self, "v_reset", None)
        if self.impl not in NEURON_IMPLS:
            raise ValueError(f"unknown neuron impl {self.impl!r}: choose one of {NEURON_IMPLS}")
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
        base = sj_neuron.LIFNode if self.kind == "lif" else sj_neuron.IFNode
        cls = _IMPL_CLASSES[self.impl][base]
        return cls(tau=self.tau, decay_input=True, **common) if self.kind == "lif" else cls(**common)


def _multi_step(node: sj_neuron.BaseNode, x_seq: torch.Tensor, tau: Optional[float]) -> torch.Tensor:
    """Pure-PyTorch multi-step LIF (``tau``) / IF (``tau=None``) with spikingjelly's op order.

    State and arithmetic stay in float32 whatever the input dtype (as spikingjelly's kernels);
    spikes are returned in the input dtype.
    """
    v = node._memories["v"]
    v_th, v_reset, detach = node.v_threshold, node.v_reset, node.detach_reset
    reset_value = 0.0 if v_reset is None else v_reset
    sg = node.surrogate_function
    spikes = []
    for x in x_seq.unbind(0):
        x = x.float()
        # charge: identical expression (and rounding) to spikingjelly's reference/CPU kernels
        h = v + (x - (v - reset_value)) / tau if tau is not None else v + x
        spike = sg(h - v_th)
        s = spike.detach() if detach else spike
        v = h - s * v_th if v_reset is None else s * v_reset + (1.0 - s) * h
        spikes.append(spike)
    node._memories["v"] = v
    out = torch.stack(spikes)
    return out if out.dtype == x_seq.dtype else out.to(x_seq.dtype)


class TorchLIFNode(sj_neuron.LIFNode):
    """spikingjelly ``LIFNode`` whose multi-step pass is a plain PyTorch loop.

    Same constructor, state (``v``, cleared by ``reset_net``) and maths as the parent; the loop
    is transparent to ``torch.compile`` (the parent's CPU operator is opaque to it).
    """

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or self.store_v_seq or not self.decay_input:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        return _multi_step(self, x_seq, self.tau)


class TorchIFNode(sj_neuron.IFNode):
    """spikingjelly ``IFNode`` whose multi-step pass is a plain PyTorch loop (see :class:`TorchLIFNode`)."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or self.store_v_seq:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        return _multi_step(self, x_seq, None)


_IMPL_CLASSES = {
    "spikingjelly": {sj_neuron.LIFNode: sj_neuron.LIFNode, sj_neuron.IFNode: sj_neuron.IFNode},
    "torch": {sj_neuron.LIFNode: TorchLIFNode, sj_neuron.IFNode: TorchIFNode},
    "triton": {sj_neuron.LIFNode: TritonLIFNode, sj_neuron.IFNode: TritonIFNode},
}


_CONVERTIBLE = (sj_neuron.LIFNode, sj_neuron.IFNode, TorchLIFNode, TorchIFNode, TritonLIFNode, TritonIFNode)


def convert_neurons(model: nn.Module, impl: str = "torch") -> int:
    """Switch every LIF/IF neuron of ``model`` to implementation ``impl`` in place.

    Only the class changes (same hyper-parameters, same state), so it is cheap and reversible.
    Returns the number of neurons switched.
    """
    if impl not in NEURON_IMPLS:
        raise ValueError(f"unknown neuron impl {impl!r}: choose one of {NEURON_IMPLS}")
    n = 0
    for _, m in spiking_modules(model):
        if type(m) not in _CONVERTIBLE:  # leave user subclasses alone
            continue
        base = sj_neuron.LIFNode if isinstance(m, sj_neuron.LIFNode) else sj_neuron.IFNode
        target = _IMPL_CLASSES[impl][base]
        if type(m) is not target:
            m.__class__ = target
            n += 1
    return n


def make_neuron(cfg: Optional[NeuronConfig] = None, v_threshold: Optional[float] = None) -> nn.Module:
    """Shorthand for ``(cfg or NeuronConfig()).make(v_threshold)``."""
    return (cfg or NeuronConfig()).make(v_threshold)


def spiking_modules(model: nn.Module):
    """Yield ``(name, module)`` for every spikingjelly neuron in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, (sj_neuron.LIFNode, sj_neuron.IFNode)):
            yield name, m


def reset_net(model: nn.Module) -> None:
    """Reset the membrane state of every neuron of ``model``.

    The models of this repository reset their neurons at the start of every forward pass, so this is
    only needed for models built with ``stateful=True`` (a new stream starts) and for bare neurons.
    """
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


def describe_neurons(model: nn.Module, device: "torch.device | str" = "cpu") -> str:
    """What actually runs the neurons of ``model`` on ``device``, e.g. ``'23 lif: spikingjelly cpu-op ...'``."""
    counts: dict = {}
    for _, m in spiking_modules(model):
        kind = "lif" if isinstance(m, sj_neuron.LIFNode) else "if"
        impl = ("pure-PyTorch loop (impl='torch')" if isinstance(m, (TorchLIFNode, TorchIFNode))
                else describe_triton(kind, device) if isinstance(m, (TritonLIFNode, TritonIFNode)) else None)
        key = (kind, impl or neuron_implementation(kind, device))
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no spiking neurons"
    return "; ".join(f"{n} {kind}: {impl}" for (kind, impl), n in sorted(counts.items()))
