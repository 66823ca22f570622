"""Spiking neuron factory on spikingjelly 2.0 (``activation_based``, multi-step).

Every spiking layer of every model is built through :class:`NeuronConfig`, so a single
model kwarg (``neuron='lif'``, ``tau``, ``v_reset``...) reaches all of them.

``neuron`` is a short name of :data:`NEURONS` (``'lif'``, ``'if'``, ``'plif'``) or the class name of
any spikingjelly multi-step neuron (``'CUBALIFNode'``, ``'IzhikevichNode'``...). The shared settings
(``tau``, ``v_threshold``, ``v_reset``, ``detach_reset``, ``surrogate``/``alpha``) reach every neuron
whose constructor takes them; a neuron's own constructor arguments (``decay_input``, ``c_decay``...)
are model kwargs too (:func:`neuron_kwarg_types`); a constructor argument ``T`` gets the model's ``T``.
A new short name is one :class:`NeuronKind` entry in :data:`NEURONS`.

Defaults reproduce the published neuron: LIF, tau=2, V_th=1, hard reset to 0,
``detach_reset=True``, Sigmoid surrogate with alpha=4 (``H = V + (X - V)/tau``,
spike if ``H >= V_th``).

Interchangeable implementations of the same maths (``NeuronConfig.impl``), for LIF and IF:
``'spikingjelly'`` (default, every neuron) runs spikingjelly's registered kernels (CPU operator,
CUDA/Triton); ``'torch'`` runs a plain PyTorch time loop (:class:`TorchLIFNode`, :class:`TorchIFNode`)
that ``torch.compile`` can fuse with the surrounding layers; ``'triton'`` always runs spikingjelly's
Triton kernels, also on CPU tensors in Triton's interpreter: a verification device that registers
itself here when ``utils.verify.triton_cpu`` is imported (:func:`register_implementation`). Spikes
are bitwise identical on CPU; gradients agree to a few ulp (the kernels multiply in different orders).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import logging
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

__all__ = [
    "NeuronKind",
    "NEURONS",
    "NEURON_SETTINGS",
    "NeuronConfig",
    "make_neuron",
    "reset_net",
    "neuron_kind",
    "neuron_kwarg_types",
    "neuron_name",
    "neuron_implementation",
    "spiking_modules",
    "is_neuron",
    "implementation_of",
    "register_implementation",
    "TorchLIFNode",
    "TorchIFNode",
    "convert_neurons",
    "describe_neurons",
]

_logger = logging.getLogger(__name__)

SURROGATES = {
    "sigmoid": sj_surrogate.Sigmoid,
    "atan": sj_surrogate.ATan,
    "piecewise_quadratic": sj_surrogate.PiecewiseQuadratic,
}
NEURON_IMPLS = ("spikingjelly", "torch", "triton")
# Implementations that live outside models/ (which imports nothing from utils/) and register on import.
_REGISTERED_BY = {"triton": "utils.verify.triton_cpu"}
# Model-wide settings (NeuronConfig fields) -> the constructor argument they set where a neuron takes it.
_SHARED = {"tau": "tau", "v_threshold": "v_threshold", "v_reset": "v_reset", "detach_reset": "detach_reset",
           "surrogate": "surrogate_function", "alpha": "surrogate_function"}
# The model kwargs every neuron accepts (the shared settings and the implementation).
NEURON_SETTINGS = (*_SHARED, "impl")
# Constructor arguments the factory sets itself (never model kwargs).
_MANAGED = ("step_mode", "surrogate_function", "T", "store_v_seq", "store_state_seqs")
_SJ_NEURON_PACKAGE = sj_neuron.__name__


@dataclasses.dataclass(frozen=True)
class NeuronKind:
    """One entry of :data:`NEURONS`: a spikingjelly multi-step neuron class under a short name.

    ``defaults``: constructor arguments this repository gives it (a model kwarg overrides them);
    ``renames``: shared settings that feed another argument of this class (PLIF: ``tau`` -> ``init_tau``);
    ``kernel``: spikingjelly's name for the neuron's registered kernels (``describe_neurons``), if any.
    """

    cls: type
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    renames: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kernel: Optional[str] = None

    def shared(self) -> Dict[str, str]:
        """``{shared setting: constructor argument}`` for the settings this class takes."""
        params = _parameters(self.cls)
        out = {k: self.renames.get(k, p) for k, p in _SHARED.items()}
        return {k: p for k, p in out.items() if p in params}

    def own(self) -> Dict[str, Any]:
        """``{argument: annotation or None}`` of the class's own constructor arguments (model kwargs)."""
        taken = set(_SHARED.values()) | set(_MANAGED)  # a renamed target (PLIF's init_tau) stays settable
        hints = _hints(self.cls)
        return {k: hints.get(k) for k in _parameters(self.cls) if k not in taken}


NEURONS: Dict[str, NeuronKind] = {
    "lif": NeuronKind(sj_neuron.LIFNode, {"decay_input": True}, kernel="lif"),
    "if": NeuronKind(sj_neuron.IFNode, kernel="if"),
    "plif": NeuronKind(sj_neuron.ParametricLIFNode, renames={"tau": "init_tau"}, kernel="plif"),
}


@functools.lru_cache(maxsize=None)
def _parameters(cls: type) -> Dict[str, inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: names only
        return {}


@functools.lru_cache(maxsize=None)
def _spikingjelly_classes() -> Dict[str, type]:
    """spikingjelly's multi-step neuron classes by class name (abstract bases left out)."""
    out = {}
    for name in dir(sj_neuron):
        cls = getattr(sj_neuron, name)
        if (inspect.isclass(cls) and issubclass(cls, nn.Module) and issubclass(cls, sj_base.StepModule)
                and not name.endswith("BaseNode") and not inspect.isabstract(cls)):
            out[name] = cls
    return out


def neuron_kind(name: str) -> NeuronKind:
    """The :class:`NeuronKind` of ``name``: a short name of :data:`NEURONS` or a spikingjelly class name."""
    if isinstance(name, str) and name in NEURONS:
        return NEURONS[name]
    cls = _spikingjelly_classes().get(name) if isinstance(name, str) else None
    if cls is None:
        choices = list(NEURONS) + sorted(_spikingjelly_classes())
        close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
        hint = f"Did you mean: {', '.join(close)}?" if close else f"Choose one of: {', '.join(choices)}."
        raise ValueError(f"unknown neuron {name!r}: not a short name ({', '.join(NEURONS)}) nor a spikingjelly "
                         f"multi-step neuron class. {hint}")
    return next((k for k in NEURONS.values() if k.cls is cls), None) or NeuronKind(cls)


def neuron_kwarg_types(name: str) -> Dict[str, Any]:
    """``{model kwarg: annotation}`` that neuron ``name`` takes: the shared settings (every neuron accepts
    them; they reach those whose constructor takes them), ``impl`` and the neuron's own arguments."""
    fields = typing.get_type_hints(NeuronConfig)
    out = {k: fields[k] for k in _SHARED}
    out["impl"] = fields["impl"]
    kind = neuron_kind(name)
    out.update({k: v for k, v in kind.own().items() if k not in kind.shared()})
    return out


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """Hyper-parameters shared by every spiking neuron of a model.

    ``kind``: a short name of :data:`NEURONS` or a spikingjelly neuron class name; ``options``: that
    neuron's own constructor arguments as ``(name, value)`` pairs; ``T``: the model's time steps (for
    neurons whose constructor takes ``T``).
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
    options: Tuple[Tuple[str, Any], ...] = ()
    T: Optional[int] = None

    def __post_init__(self):
        if self.v_reset == "soft":
            object.__setattr__(self, "v_reset", None)
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        kind = neuron_kind(self.kind)
        _check_impl(self.impl)
        if self.surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.surrogate!r}: choose one of {tuple(SURROGATES)}")
        if kind.cls is sj_neuron.LIFNode and not self.tau > 1.0:
            raise ValueError(f"LIF needs tau > 1 (beta = 1 - 1/tau in [0, 1)), got tau={self.tau}")
        own = kind.own()
        unknown = [k for k, _ in self.options if k not in own]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(own), n=3, cutoff=0.6)
            hint = f"Did you mean: {', '.join(close)}?" if close else f"Its own arguments: {', '.join(own) or 'none'}."
            raise ValueError(f"neuron {self.kind!r} ({kind.cls.__name__}) takes no argument {unknown[0]!r}. {hint}")
        if self.impl != "spikingjelly" and kind.cls not in _IMPLEMENTATIONS.get(self.impl, {}):
            have = ", ".join(_name_of_class(c) for c in _IMPLEMENTATIONS.get(self.impl, {}))
            raise ValueError(f"neuron impl {self.impl!r} exists for {have}, not for {self.kind!r}; "
                             f"use impl='spikingjelly' (spikingjelly's own kernels)")

    @classmethod
    def from_kwargs(cls, neuron: "str | NeuronConfig" = "lif", **kwargs) -> "NeuronConfig":
        """Build from model kwargs: ``neuron`` is a kind name or a ready config; kwargs that are not
        fields (a neuron's own constructor arguments) become :attr:`options`."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"kind", "options"}
        base = neuron if isinstance(neuron, NeuronConfig) else None
        kind = neuron_kind(base.kind if base else neuron)
        # a name that is a shared setting unused by this neuron but one of its own arguments is its own
        own_names = set(kind.own()) - set(kind.shared())
        settings = {k: v for k, v in kwargs.items() if k in fields and k not in own_names}
        options = {k: v for k, v in kwargs.items() if k not in settings}
        if base is not None:
            options = dict(base.options, **options)
            return dataclasses.replace(base, options=tuple(sorted(options.items())), **settings) \
                if kwargs else base
        return cls(kind=neuron, options=tuple(sorted(options.items())), **settings)

    def make(self, v_threshold: Optional[float] = None) -> nn.Module:
        """A fresh multi-step neuron (input ``[T, ...]``); ``v_threshold`` overrides the default."""
        kind = neuron_kind(self.kind)
        surrogate = SURROGATES[self.surrogate](alpha=self.alpha)
        values = dict(tau=self.tau, v_threshold=self.v_threshold if v_threshold is None else v_threshold,
                      v_reset=self.v_reset, detach_reset=self.detach_reset, surrogate=surrogate, alpha=surrogate)
        args = dict(kind.defaults)
        args.update({param: values[setting] for setting, param in kind.shared().items()})
        args.update(self.options)
        params = _parameters(kind.cls)
        if "T" in params and self.T is not None:
            args["T"] = self.T
        if "step_mode" in params:
            args["step_mode"] = "m"
        missing = [k for k, p in params.items() if p.default is p.empty and k not in args]
        if missing:
            what = "the model's T" if missing == ["T"] else f"{', '.join(missing)} (model kwargs)"
            raise ValueError(f"neuron {self.kind!r} ({kind.cls.__name__}) needs {what}")
        cls = kind.cls if self.impl == "spikingjelly" else _IMPLEMENTATIONS[self.impl][kind.cls]
        node = cls(**args)
        if getattr(node, "step_mode", "m") != "m":  # a constructor without step_mode (CUBALIFNode)
            node.step_mode = "m"
        return node


def _check_impl(impl: str) -> None:
    if impl in _IMPLEMENTATIONS:
        return
    if impl in _REGISTERED_BY:
        raise ValueError(f"neuron impl {impl!r} is not registered: it is a verification device that registers "
                         f"itself on import. In Python, import {_REGISTERED_BY[impl]} first; train.py, validate.py "
                         f"and benchmark.py load it for the config key neuron_impl: {impl} (--neuron-impl {impl}), "
                         f"not for a model kwarg")
    raise ValueError(f"unknown neuron impl {impl!r}: choose one of {NEURON_IMPLS}")


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


# impl name -> {spikingjelly class: the class that runs it through that implementation}
_IMPLEMENTATIONS: Dict[str, Dict[type, type]] = {
    "spikingjelly": {},  # every neuron runs its own class
    "torch": {sj_neuron.LIFNode: TorchLIFNode, sj_neuron.IFNode: TorchIFNode},
}
# implementation class -> ``describe(kind, device)``: one line on what runs it
_DESCRIBE: Dict[type, Callable[[str, Any], str]] = {
    TorchLIFNode: lambda kind, device: "pure-PyTorch loop (impl='torch')",
    TorchIFNode: lambda kind, device: "pure-PyTorch loop (impl='torch')",
}


def register_implementation(name: str, classes: Mapping[type, type],
                            describe: Callable[[str, "torch.device | str"], str]) -> None:
    """Make ``impl=name`` available: ``classes`` maps spikingjelly neuron classes to the subclasses that run
    them through this implementation; ``describe(kind, device)`` says in one line what runs them."""
    if name == "spikingjelly":
        raise ValueError("impl 'spikingjelly' is built in")
    _IMPLEMENTATIONS[name] = dict(classes)
    for impl_cls in classes.values():
        _DESCRIBE[impl_cls] = describe


def _base_class(cls: type) -> Optional[type]:
    """The spikingjelly class an implementation class runs (itself for a spikingjelly class we convert)."""
    for table in _IMPLEMENTATIONS.values():
        for base, impl_cls in table.items():
            if cls is base or cls is impl_cls:
                return base
    return None


def implementation_of(module: nn.Module) -> str:
    """The implementation (``'spikingjelly'``, ``'torch'``...) that runs neuron ``module``."""
    for name, table in _IMPLEMENTATIONS.items():
        if type(module) in table.values():
            return name
    return "spikingjelly"


def convert_neurons(model: nn.Module, impl: str = "torch") -> int:
    """Switch every neuron of ``model`` that ``impl`` has (LIF/IF) to implementation ``impl`` in place.

    Only the class changes (same hyper-parameters, same state), so it is cheap and reversible. Neurons
    ``impl`` does not cover, and user subclasses, are left alone. Returns the number of neurons switched.
    """
    _check_impl(impl)
    n = 0
    for _, m in spiking_modules(model):
        base = _base_class(type(m))
        if base is None:
            continue
        target = base if impl == "spikingjelly" else _IMPLEMENTATIONS[impl].get(base)
        if target is not None and type(m) is not target:
            m.__class__ = target
            n += 1
    return n


def make_neuron(cfg: Optional[NeuronConfig] = None, v_threshold: Optional[float] = None) -> nn.Module:
    """Shorthand for ``(cfg or NeuronConfig()).make(v_threshold)``."""
    return (cfg or NeuronConfig()).make(v_threshold)


def is_neuron(module: nn.Module) -> bool:
    """True for a spikingjelly neuron (any class of ``spikingjelly.activation_based.neuron``, or a subclass)."""
    return isinstance(module, sj_base.StepModule) and any(
        c.__module__.startswith(_SJ_NEURON_PACKAGE) for c in type(module).__mro__)


def spiking_modules(model: nn.Module):
    """Yield ``(name, module)`` for every spikingjelly neuron in ``model``."""
    for name, m in model.named_modules():
        if is_neuron(m):
            yield name, m


def _name_of_class(cls: type) -> str:
    base = _base_class(cls) or cls
    return next((k for k, v in NEURONS.items() if v.cls is base), base.__name__)


def neuron_name(module: nn.Module) -> str:
    """``'lif'``, ``'if'``, ``'plif'``... for a neuron of :data:`NEURONS` (any implementation), else its class name."""
    return _name_of_class(type(module))


def reset_net(model: nn.Module) -> None:
    """Reset the membrane state of every neuron of ``model``.

    The models of this repository reset their neurons at the start of every forward pass, so this is
    only needed for models built with ``stateful=True`` (a new stream starts) and for bare neurons.
    """
    sj_functional.reset_net(model)


def neuron_implementation(kind: str = "lif", device: "torch.device | str" = "cpu") -> str:
    """Name of the spikingjelly kernel that runs ``kind`` neurons (spikingjelly's kernel name) on ``device``.

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


def _describe(module: nn.Module, device) -> str:
    base = _base_class(type(module)) or type(module)
    kernel = next((k.kernel for k in NEURONS.values() if k.cls is base), None)
    if type(module) in _DESCRIBE:
        return _DESCRIBE[type(module)](kernel or base.__name__, device)
    if kernel is not None:
        return neuron_implementation(kernel, device)
    return f"spikingjelly {type(module).__name__}'s own multi-step forward"


def describe_neurons(model: nn.Module, device: "torch.device | str" = "cpu") -> str:
    """What actually runs the neurons of ``model`` on ``device``, e.g. ``'23 lif: spikingjelly cpu-op ...'``."""
    counts: dict = {}
    for _, m in spiking_modules(model):
        key = (neuron_name(m), _describe(m, device))
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no spiking neurons"
    return "; ".join(f"{n} {kind}: {impl}" for (kind, impl), n in sorted(counts.items()))
