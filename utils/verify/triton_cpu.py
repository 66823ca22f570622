"""spikingjelly's Triton LIF/IF kernels as a neuron implementation (``NeuronConfig(impl='triton')``).

A verification device: importing this module registers ``impl='triton'`` with :mod:`models.neurons`
(:func:`models.neurons.register_implementation`); ``train.py``/``benchmark.py`` with ``neuron_impl: triton``
and ``python -m utils.verify.conformance --neuron-impl triton`` import it first.

On CUDA, spikingjelly 2.0.0 runs its Triton kernels when its native CUDA part is missing (the PyPI
wheel). :class:`TritonLIFNode` / :class:`TritonIFNode` force those kernels on any device: on CUDA
tensors they launch unchanged; on CPU tensors, with ``TRITON_INTERPRET=1`` set before the kernels
are imported, the same kernels run in Triton's interpreter, so the GPU neuron code is checked on a
machine without a GPU (``tests/test_triton_kernels.py``, ``python -m utils.verify.conformance
--neuron-impl triton``).

The shim is thin: spikingjelly's launchers (``_forward_impl`` / ``_backward_impl`` of
``spikingjelly._ops.lif.triton`` and ``spikingjelly._ops.if_.triton``) refuse non-CUDA tensors
(``torch._check(x.device.type == "cuda", ...)``) and enter ``torch.cuda.device``. For CPU tensors we
call copies of them that see a ``torch`` waiving exactly these two guards, and launch the kernels
with a larger block (:data:`INTERPRETER_BLOCK`): the interpreter pays ~10 ms per program instance
whatever its size. The kernels' code, arguments and arithmetic are spikingjelly's. These launchers are
private API, so the shim is pinned to :data:`SPIKINGJELLY_VERSION` and :func:`load_kernels` fails with
a message naming what moved.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import types
from typing import Callable, Tuple

import torch
from spikingjelly.activation_based import neuron as sj_neuron

from models.neurons import register_implementation

__all__ = ["SPIKINGJELLY_VERSION", "INTERPRETER_BLOCK", "TritonKernels", "TritonAPIError", "load_kernels",
           "check_device", "interpreter_requested", "triton_multi_step", "TritonLIFNode", "TritonIFNode", "describe"]

SPIKINGJELLY_VERSION = "2.0.0"
# Neurons per program instance in the interpreter (capped at the layer's size rounded up to a power of
# two). LIF forward+backward, T=4, 2 CPU cores: 65,536 neurons take 17 s at block 256 (the GPU block),
# 1.5 s at 4096, 0.37 s at 65536; 16,384 neurons 3.1 s / 0.23 s / 0.09 s (docs/speed.md).
INTERPRETER_BLOCK = 65536
_MODULES = {"lif": "spikingjelly._ops.lif.triton", "if": "spikingjelly._ops.if_.triton"}
# What the shim relies on in each module: launcher guards it waives, kernel arguments it sets.
_GUARDS = ("torch._check(", '.device.type == "cuda"', "requires CUDA", "with torch.cuda.device(")
_KERNEL_ARGS = ("N", "BLOCK", "LAYOUT")


class TritonAPIError(RuntimeError):
    """spikingjelly's Triton internals are not what this shim was written for."""


@dataclasses.dataclass(frozen=True)
class TritonKernels:
    """spikingjelly's launchers for one neuron kind, ready for CPU (interpreted) and CUDA tensors."""

    kind: str
    forward: Callable          # spikingjelly's launcher, as is (CUDA tensors)
    backward: Callable
    cpu_forward: Callable      # the same launcher with the device guards waived (CPU tensors)
    cpu_backward: Callable
    interpreted: bool          # the kernels were decorated under TRITON_INTERPRET=1

    def launchers(self, device: torch.device) -> Tuple[Callable, Callable]:
        if device.type == "cuda":
            return self.forward, self.backward
        if not self.interpreted:
            raise RuntimeError(
                f"spikingjelly's Triton {self.kind} kernels were compiled for the GPU, so they cannot run on {device} "
                "tensors: TRITON_INTERPRET was not 1 when they were imported. Run the command with "
                "TRITON_INTERPRET=1 in its environment (e.g. TRITON_INTERPRET=1 python train.py ...; slow: for "
                "checks) or run on CUDA.")
        return self.cpu_forward, self.cpu_backward


def _installed_version() -> str:
    try:
        return importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _api_error(what: str) -> TritonAPIError:
    return TritonAPIError(
        f"neuron impl 'triton' wraps private launchers of spikingjelly {SPIKINGJELLY_VERSION}, but {what} "
        f"(installed spikingjelly {_installed_version()}). Install spikingjelly=={SPIKINGJELLY_VERSION} "
        "(requirements.txt) or port utils/verify/triton_cpu.py to the new API.")


class _CudaWithoutDeviceGuard:
    """``torch.cuda`` whose ``device(...)`` context does nothing for CPU tensors."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def device(device):
        return contextlib.nullcontext() if torch.device(device).type == "cpu" else torch.cuda.device(device)


class _TorchWithoutDeviceGuard:
    """``torch`` as the CPU copies of the launchers see it: the "requires CUDA" check is waived."""

    cuda = _CudaWithoutDeviceGuard()

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _check(cond, message=None):
        if not cond and message is not None and "requires CUDA" in message():
            return
        torch._check(cond, message)


class _InterpreterLaunch:
    """``kernel[grid](*args)`` with the block (and the grid that follows from it) set for the interpreter."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs):
        from spikingjelly._ops.triton_layout import _neuron_grid  # lazy: imports triton

        bound = dict(zip(self.kernel.arg_names, args), **kwargs)
        layout = bound.get("LAYOUT")
        sizes, minor = (layout[0], layout[2]) if layout else ((), 1)
        n = int(bound["N"])
        block = max(minor, min(INTERPRETER_BLOCK, 1 << max(n - 1, 1).bit_length()))
        bound["BLOCK"] = block
        return self.kernel[_neuron_grid(n, sizes, block, minor)](**bound)


def _without_device_guard(launcher: Callable) -> Callable:
    """A copy of ``launcher`` bound to :class:`_TorchWithoutDeviceGuard`, launching via :class:`_InterpreterLaunch`."""
    scope = dict(launcher.__globals__, torch=_TorchWithoutDeviceGuard())
    copy = types.FunctionType(launcher.__code__, scope, launcher.__name__, launcher.__defaults__,
                              launcher.__closure__)
    copy.__kwdefaults__ = dict(launcher.__kwdefaults__ or {}, _kernel_wrapper=_InterpreterLaunch)
    return copy


def _check_launcher(module, name: str):
    launcher = getattr(module, name, None)
    if not callable(launcher):
        raise _api_error(f"{module.__name__}.{name} is gone")
    if "_kernel_wrapper" not in inspect.signature(launcher).parameters:
        raise _api_error(f"{module.__name__}.{name} takes no _kernel_wrapper argument any more")
    source = inspect.getsource(launcher)
    for guard in _GUARDS:
        if guard not in source:
            raise _api_error(f"{module.__name__}.{name} no longer contains the device guard `{guard}` the shim waives")
    return launcher


@functools.lru_cache(maxsize=None)
def load_kernels(kind: str) -> TritonKernels:
    """Import spikingjelly's Triton launchers for ``kind`` ('lif' | 'if'), checking the pinned API.

    Raises ``ImportError`` if Triton is not importable and :class:`TritonAPIError` if spikingjelly is not
    the version (or the layout) this shim was written for.
    """
    if kind not in _MODULES:
        raise ValueError(f"unknown neuron kind {kind!r}: choose one of {tuple(_MODULES)}")
    version = _installed_version()
    if version != SPIKINGJELLY_VERSION:
        raise _api_error(f"spikingjelly {version} is installed")
    import triton  # noqa: F401  (ImportError: no Triton, the caller says so)

    try:
        module = importlib.import_module(_MODULES[kind])
    except ModuleNotFoundError as err:
        raise _api_error(f"{_MODULES[kind]} cannot be imported ({err})") from err
    forward, backward = _check_launcher(module, "_forward_impl"), _check_launcher(module, "_backward_impl")
    kernels = [getattr(module, k, None) for k in ("_forward_kernel", "_backward_kernel")]
    for kernel in kernels:
        names = getattr(kernel, "arg_names", ())
        if not set(_KERNEL_ARGS) <= set(names):
            raise _api_error(f"{module.__name__}'s kernels no longer take the arguments {_KERNEL_ARGS}")
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError as err:
        raise _api_error(f"triton has no interpreter ({err})") from err
    interpreted = all(isinstance(k, InterpretedFunction) for k in kernels)
    return TritonKernels(kind, forward, backward, _without_device_guard(forward), _without_device_guard(backward),
                         interpreted)


def check_device(device: "torch.device | str") -> None:
    """Fail now, with the fix, if ``impl='triton'`` neurons cannot run on ``device``.

    Loads the kernels (so ``TRITON_INTERPRET`` must already be set for CPU use); raises ``ImportError``
    (no Triton), :class:`TritonAPIError` (another spikingjelly) or ``RuntimeError`` (compiled kernels, CPU).
    """
    for kind in _MODULES:
        load_kernels(kind).launchers(torch.device(device))


def interpreter_requested() -> bool:
    """True if Triton kernels imported from now on run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _TritonNeuronFunction(torch.autograd.Function):
    """Multi-step neuron through spikingjelly's Triton kernels; backward through its backward kernel."""

    @staticmethod
    def forward(ctx, x_seq, v, fwd, bwd, params):
        spikes, v_last, h = fwd(x_seq, v, *params)
        ctx.save_for_backward(h)
        ctx.bwd, ctx.params, ctx.x_dtype = bwd, params, x_seq.dtype
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes, grad_v):
        (h,) = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(h, dtype=ctx.x_dtype)
        if grad_v is None:
            grad_v = torch.zeros_like(h[0])
        grad_x, grad_v0 = ctx.bwd(grad_spikes, grad_v, h, *ctx.params)
        return grad_x, grad_v0, None, None, None


def _surrogate(node: sj_neuron.BaseNode) -> Tuple[int, float]:
    from spikingjelly._ops.surrogate import _surrogate_spec  # lazy: private API, only for impl triton

    spec = _surrogate_spec(node.surrogate_function)
    if spec is None:
        raise ValueError(f"neuron impl 'triton': spikingjelly's kernels have no surrogate "
                         f"{type(node.surrogate_function).__name__}; use impl='torch' or 'spikingjelly'")
    return spec


def triton_multi_step(node: sj_neuron.BaseNode, x_seq: torch.Tensor) -> torch.Tensor:
    """Run ``node`` (an LIF/IF neuron, multi-step) on ``x_seq`` through spikingjelly's Triton kernels.

    The state ``v`` is kept in float32 (the kernels' contract) whatever the input dtype; spikes come
    back in the input dtype.
    """
    kind = "lif" if isinstance(node, sj_neuron.LIFNode) else "if"
    if node.store_v_seq:
        raise ValueError("neuron impl 'triton' does not store the voltage sequence; set store_v_seq=False")
    fwd, bwd = load_kernels(kind).launchers(x_seq.device)
    surrogate_id, alpha = _surrogate(node)
    v = node._memories["v"]
    if isinstance(v, torch.Tensor) and v.shape == x_seq.shape[1:]:
        v = v.to(device=x_seq.device, dtype=torch.float32)
    else:
        v = torch.full_like(x_seq[0], v if isinstance(v, float) else (node.v_reset or 0.0), dtype=torch.float32)
    common = (node.v_threshold, node.v_reset, node.detach_reset, alpha, False, surrogate_id)
    params = (float(node.tau), bool(node.decay_input)) + common if kind == "lif" else common
    spikes, v_last = _TritonNeuronFunction.apply(x_seq, v, fwd, bwd, params)
    node._memories["v"] = v_last
    return spikes


class TritonLIFNode(sj_neuron.LIFNode):
    """spikingjelly ``LIFNode`` whose multi-step pass always runs spikingjelly's Triton kernels."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("neuron impl 'triton' takes only the input sequence")
        return triton_multi_step(self, x_seq)


class TritonIFNode(sj_neuron.IFNode):
    """spikingjelly ``IFNode`` whose multi-step pass always runs spikingjelly's Triton kernels."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("neuron impl 'triton' takes only the input sequence")
        return triton_multi_step(self, x_seq)


def describe(kind: str, device: "torch.device | str") -> str:
    """How ``impl='triton'`` neurons of ``kind`` run on ``device`` (one line, never raises)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"spikingjelly {kind} Triton kernels (impl='triton', {device})"
    module = sys.modules.get(_MODULES.get(kind, ""))
    kernel = getattr(module, "_forward_kernel", None)
    interpreted = interpreter_requested() if kernel is None else type(kernel).__name__ == "InterpretedFunction"
    mode = "Triton interpreter on CPU" if interpreted else "CPU tensors need TRITON_INTERPRET=1"
    return f"spikingjelly {kind} Triton kernels (impl='triton', {mode})"


register_implementation("triton", {sj_neuron.LIFNode: TritonLIFNode, sj_neuron.IFNode: TritonIFNode}, describe)
