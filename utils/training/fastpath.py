"""Fast execution paths for the spiking models: the same maths in less time and memory.

``prepare_model(model, mode)`` applies, in place, the transformations that keep every golden
conformance case within tolerance (``tests/test_fastpath.py`` runs them through the fast path):

* ``neuron_impl='torch'``: spikingjelly's CPU neuron operator is opaque to ``torch.compile``;
  the plain PyTorch loop of :mod:`models.neurons` (bitwise-identical spikes) lets the compiler
  fuse charge/fire/reset with the BatchNorm and residual adds around it.
* ``compile``: ``torch.compile`` of the whole model (``'model'``) or of each patch embedding and
  block (``'blocks'``, shorter compile, recompiled per distinct shape).
* ``channels_last``: NHWC convolutions (oneDNN's fast layout on CPU, tensor cores on GPU).
* ``fold_bn`` (inference only): BatchNorm folded into the convolution that feeds it, found by
  running one example batch with hooks (only pairs whose BN input *is* the conv output fold).
* ``grad_checkpointing`` (training): recompute each block in backward instead of storing its
  activations; neuron state and BatchNorm running statistics are handled so results match.
* ``fast_conv`` (training, without whole-model compile): convolutions keep their eager forward (bitwise), but
  the backward of large 1x1 convolutions runs as matrix products (oneDNN's NCHW 1x1 backward is slow on CPU).
* ``compact_spikes`` (training): a convolution whose input is binary (spikes) saves it for
  backward as ``bool`` instead of float (4x smaller, exact).
* ``fast_pool`` (without whole-model compile): max-pooling computed in channels-last, where
  PyTorch's CPU kernel is ~10x faster than in NCHW (about 2x for forward + backward after the
  layout copies); bitwise equal values, indices and gradients.

``DEFAULTS`` hold the fastest settings that stay within the golden tolerances in float32;
:func:`resolve_config` turns a command line's switches into the one :class:`FastPathConfig` that
``train.py`` (its banner and args.yaml included) and ``benchmark.py`` apply (``EAGER`` = none of this).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from typing import Dict, List, Optional, Tuple

import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F

from models.grad_checkpointing import block_modules, enable_grad_checkpointing
from models.neurons import convert_neurons, implementation_of, neuron_name, reset_net, spiking_modules

__all__ = ["FastPathConfig", "DEFAULTS", "DEFAULTS_AMP", "EAGER", "default_config", "resolve_config", "cpp_compiler",
           "compile_model", "prepare_model", "prepare_input", "fold_batchnorm", "enable_grad_checkpointing",
           "enable_fast_conv", "enable_fast_pool", "block_modules", "AMP_DTYPES"]

_logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("train", "infer")
COMPILE_SCOPES = (False, "model", "blocks", "neurons")


@dataclasses.dataclass
class FastPathConfig:
    """What :func:`prepare_model` does. ``compile``: ``False``, ``'model'``, ``'blocks'`` or ``'neurons'``."""

    neuron_impl: str = "torch"
    channels_last: bool = False
    compile: object = "model"
    fold_bn: bool = False
    grad_checkpointing: bool = False
    fast_conv: bool = True
    compact_spikes: bool = False
    fast_pool: bool = True

    def __post_init__(self):
        if self.compile is True:
            self.compile = "model"
        if self.compile not in COMPILE_SCOPES:
            raise ValueError(f"compile must be one of {COMPILE_SCOPES} (True = 'model'), got {self.compile!r}")


# Measured on the 2-core CPU (docs/speed.md); every entry passes the golden tests.
# Training compiles only the neurons: whole-model compilation lets the partitioner recompute
# BN -> LIF chains in backward with differently rounded fused kernels, which flips near-threshold
# spikes and puts golden case 1's gradients far outside tolerance (its logits stay exact).
# Channels-last training flips spikes in case 3 (BN batch statistics round differently); in
# inference (BN folded, no batch statistics) it passes every case and is 1.4x faster under compile.
DEFAULTS: Dict[str, FastPathConfig] = {
    "train": FastPathConfig(neuron_impl="torch", channels_last=False, compile="neurons"),
    "infer": FastPathConfig(neuron_impl="torch", channels_last=True, compile="model", fold_bn=True),
}
# Under bf16/fp16 autocast the results differ from float32 beyond the golden tolerances anyway,
# so op-order faithfulness is moot: whole-model compile and channels-last are the fastest.
DEFAULTS_AMP: Dict[str, FastPathConfig] = {
    "train": FastPathConfig(neuron_impl="torch", channels_last=True, compile="model"),
    "infer": FastPathConfig(neuron_impl="torch", channels_last=True, compile="model", fold_bn=True),
}
EAGER = FastPathConfig(neuron_impl="spikingjelly", channels_last=False, compile=False, fast_conv=False,
                       fast_pool=False)


def default_config(mode: str, amp: str = "none") -> FastPathConfig:
    """The fast-path defaults for ``mode`` ('train'|'infer') and ``amp`` ('none'|'bf16'|'fp16')."""
    _check_mode(mode)
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {amp!r}")
    return dataclasses.replace((DEFAULTS if amp == "none" else DEFAULTS_AMP)[mode])


def cpp_compiler() -> Optional[str]:
    """The C++ compiler torch inductor would use on CPU (``torch._inductor.config.cpp.cxx``), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an inductor without this helper: fall back to PATH
        return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def resolve_config(mode: str, amp: str = "none", *, eager: bool = False, device: "torch.device | str" = "cpu",
                   **overrides) -> Tuple[FastPathConfig, Optional[str]]:
    """The one place a command line's fast-path switches become a :class:`FastPathConfig`.

    Starts from :data:`EAGER` (``eager=True``) or :func:`default_config`; each keyword override that is
    not None replaces its field (``compile=True`` means ``'model'``, ``'none'`` means off;
    ``neuron_impl='triton'`` runs uncompiled). On CPU
    without a C++ compiler compilation is switched off and the returned warning says so (else None).
    """
    cfg = EAGER if eager else default_config(mode, amp)
    over = {k: v for k, v in overrides.items() if v is not None}
    if over.get("compile") == "none":
        over["compile"] = False
    cfg = dataclasses.replace(cfg, **over)
    if cfg.neuron_impl == "triton" and cfg.compile:
        if over.get("compile"):
            raise ValueError(f"neuron_impl 'triton' launches spikingjelly's Triton kernels eagerly; compile "
                             f"{cfg.compile!r} cannot trace them: drop compile or choose neuron_impl 'torch'")
        cfg = dataclasses.replace(cfg, compile=False)  # the default neuron compile: nothing left to compile
    warning = None
    if cfg.compile and torch.device(device).type == "cpu" and cpp_compiler() is None:
        cfg = dataclasses.replace(cfg, compile=False)
        warning = ("warning: no C++ compiler found (torch.compile on CPU needs g++ or clang++, see "
                   "torch._inductor.config.cpp.cxx); the fast path runs its PyTorch neurons without compilation, "
                   "which is slower. Install one (e.g. apt install g++) or set fastpath: false.")
    return cfg, warning


def _check_mode(mode: str):
    if mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")


# ----------------------------------------------------------------------------- BN folding
def _bn_pairs(model: nn.Module, example_input: torch.Tensor) -> List[Tuple[str, str]]:
    """(conv name, bn name) pairs where the BN's input tensor is exactly the conv's output."""
    convs = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
    bns = {m: n for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    last_out: Dict[int, str] = {}
    keep = []  # hold conv outputs so their ids stay unique during the pass
    pairs: Dict[str, Optional[str]] = {}  # bn -> conv (None once a mismatch was seen)
    handles = []

    def conv_hook(mod, inp, out):
        last_out[id(out)] = convs[mod]
        keep.append(out)

    def bn_hook(mod, inp):
        src = last_out.get(id(inp[0]))
        name = bns[mod]
        if src is None or pairs.get(name, src) != src:
            pairs[name] = None
        else:
            pairs[name] = src

    for m in convs:
        handles.append(m.register_forward_hook(conv_hook))
    for m in bns:
        handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        reset_net(model)
    # a conv feeding two BNs (or used twice) cannot be folded
    users: Dict[str, int] = {}
    for conv in pairs.values():
        if conv is not None:
            users[conv] = users.get(conv, 0) + 1
    return [(c, b) for b, c in pairs.items() if c is not None and users[c] == 1]


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> int:
    """Fold eval-mode BatchNorm into the preceding convolution, in place; returns the count.

    Pairs are verified on ``example_input`` (the BN must consume the conv output directly).
    Only valid for inference: the model must be in eval mode and stay there.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs model.eval(): folding uses the BN running statistics")
    modules = dict(model.named_modules())
    n = 0
    for conv_name, bn_name in _bn_pairs(model, example_input):
        conv, bn = modules[conv_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_var is None:
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = fused.weight, fused.bias
        parent_name, _, attr = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, nn.Identity())
        n += 1
    return n


# ------------------------------------------------------------- convolutions and pooling
_MATMUL_MIN_POSITIONS = 256  # below this, oneDNN's own 1x1 backward is as fast (measured on CPU)
_WGRAD_CHUNK_ELEMS = 1 << 22  # bound of the per-sample weight-gradient temporary (16 MB fp32)


class _ConvFunction(torch.autograd.Function):
    """``F.conv1d/conv2d`` with the eager forward and a faster, leaner backward.

    The forward is the very call ``nn.Conv*d`` makes, so outputs (and spikes downstream) are
    bitwise the eager ones. Backward: 1x1, stride-1, unpadded, ungrouped convolutions over
    >= 256 positions use matrix products; everything else calls ATen's convolution_backward.
    With ``compact`` a binary input is saved as ``bool``. Under autocast the backward computes
    in the forward's dtype and returns gradients in the inputs' dtypes, as autocast does.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, compact):
        conv = F.conv2d if x.dim() == 4 else F.conv1d
        out = conv(x, weight, bias, stride, padding, dilation, groups)
        saved, ctx.packed = x, False
        if compact and x.is_floating_point():
            packed = x.bool()
            if torch.equal(packed.to(x.dtype), x):
                saved, ctx.packed = packed, True
        ctx.save_for_backward(saved, weight)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        ctx.conf = (stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = grad_out.dtype
        x, w = x.to(dtype), weight.to(dtype)
        n, c_out = grad_out.shape[:2]
        positions = grad_out[0, 0].numel()
        if (all(k == 1 for k in w.shape[2:]) and all(s == 1 for s in stride) and not any(padding)
                and groups == 1 and positions >= _MATMUL_MIN_POSITIONS):
            g = grad_out.reshape(n, c_out, positions)
            xs = x.reshape(n, -1, positions)
            gx = torch.matmul(w.reshape(c_out, -1).t(), g).view(x.shape) if need_x else None
            gw = None
            if need_w:
                chunk = max(1, _WGRAD_CHUNK_ELEMS // w.numel())
                for s in range(0, n, chunk):
                    part = torch.bmm(g[s:s + chunk], xs[s:s + chunk].transpose(1, 2)).sum(0)
                    gw = part if gw is None else gw.add_(part)
                gw = gw.view(w.shape)
            gb = g.sum((0, 2)) if need_b else None
        else:
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad_out, x, w, [c_out] if ctx.has_bias else None, list(stride), list(padding),
                list(dilation), False, [0] * len(stride), groups, [need_x, need_w, need_b])
        gx = gx.to(ctx.x_dtype) if gx is not None else None
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(weight.dtype) if gb is not None else None
        return gx, gw, gb, None, None, None, None, None


def _fast_conv_forward(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    # replaces nn.Conv*d._conv_forward, so multi-step wrappers (spikingjelly layers) still apply
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return type(conv)._conv_forward(conv, x, weight, bias)
    return _ConvFunction.apply(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                               conv.groups, conv._compact_spikes)


def enable_fast_conv(model: nn.Module, compact_spikes: bool = False) -> int:
    """Route the training backward of every zero-padded ``Conv1d``/``Conv2d`` through
    :class:`_ConvFunction` (same forward; faster 1x1 backward; ``compact_spikes`` saves binary
    inputs as bool). Returns the number of convolutions changed; state-dict keys are unchanged."""
    n = 0
    for m in model.modules():
        if (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode == "zeros"
                and not isinstance(m.padding, str)):
            m._compact_spikes = compact_spikes
            m._conv_forward = functools.partial(_fast_conv_forward, m)
            n += 1
    return n


class _MaxPoolFunction(torch.autograd.Function):
    """2-D max-pooling computed in channels-last: the same values and arg-max indices (ties
    included) as PyTorch's NCHW CPU kernel, which is several times slower. Saves only the
    indices (not the input); backward scatters the gradient back onto them."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        y, idx = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), kernel_size,
                                           stride, padding, dilation, ceil_mode)
        idx = idx.contiguous()
        ctx.save_for_backward(idx)
        ctx.x_shape = x.shape
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        n, c, h, w = ctx.x_shape
        grad_in = grad_out.new_zeros(n * c, h * w)
        grad_in.scatter_add_(1, idx.view(n * c, -1), grad_out.contiguous().view(n * c, -1))
        return grad_in.view(n, c, h, w), None, None, None, None, None


class _ChannelsLastMaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` through :class:`_MaxPoolFunction` (4-D NCHW inputs without indices)."""

    def forward(self, x):
        if x.dim() != 4 or self.return_indices or not x.is_contiguous() or x.device.type != "cpu":
            return super().forward(x)
        return _MaxPoolFunction.apply(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                      self.ceil_mode)


@functools.lru_cache(maxsize=None)
def _fast_pool_class(cls: type) -> type:
    # placed after cls in the MRO, so a multi-step wrapper (spikingjelly's MaxPool2d calls
    # super().forward per flattened batch) keeps working around the channels-last kernel
    return type(f"ChannelsLast{cls.__name__}", (cls, _ChannelsLastMaxPool), {})


def enable_fast_pool(model: nn.Module) -> int:
    """Swap every ``nn.MaxPool2d`` (incl. spikingjelly's) to the channels-last kernel; returns the count."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d) and not isinstance(m, _ChannelsLastMaxPool):
            m.__class__ = _ChannelsLastMaxPool if type(m) is nn.MaxPool2d else _fast_pool_class(type(m))
            n += 1
    return n


# ------------------------------------------------------------------------------ entry point
def prepare_model(model: nn.Module, mode: str = "train", config: Optional[FastPathConfig] = None,
                  example_input: Optional[torch.Tensor] = None, defer_compile: bool = False,
                  **overrides) -> nn.Module:
    """Apply the fast path to ``model`` in place and return it.

    ``config`` defaults to ``DEFAULTS[mode]``; keyword ``overrides`` change single fields
    (``channels_last=True``, ``compile=False``, ...). ``fold_bn`` needs ``example_input`` (one
    batch of the shape the model will see) and eval mode; it is skipped with a log line otherwise.
    The module keeps its class, parameters and state-dict keys; ``model.fastpath_config`` records
    the settings that applied in this mode. ``defer_compile``: leave compilation to the caller
    (:func:`compile_model`, e.g. after wrapping in DDP).
    """
    _check_mode(mode)
    cfg = dataclasses.replace(config or DEFAULTS[mode], **overrides)
    train = mode == "train"
    if cfg.fold_bn and not train and example_input is None:
        _logger.info("fold_bn skipped: prepare_model got no example_input")
    # what actually applies in this mode (recorded as model.fastpath_config)
    cfg = dataclasses.replace(
        cfg, fold_bn=cfg.fold_bn and not train and example_input is not None,
        grad_checkpointing=cfg.grad_checkpointing and train, compact_spikes=cfg.compact_spikes and train,
        # under whole-model compile inductor derives the convolution backward and lowers pooling itself
        fast_conv=train and ((cfg.fast_conv and cfg.compile != "model") or cfg.compact_spikes),
        fast_pool=cfg.fast_pool and not cfg.channels_last and cfg.compile != "model")
    _convert_neurons(model, cfg.neuron_impl)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if not train:
        model.eval()
    if cfg.fold_bn:
        n = fold_batchnorm(model, prepare_input(example_input, cfg.channels_last))
        _logger.info("folded %d BatchNorm layers into convolutions", n)
    if cfg.fast_conv:
        enable_fast_conv(model, cfg.compact_spikes)
    if cfg.grad_checkpointing and enable_grad_checkpointing(model) == 0:
        raise ValueError(f"{type(model).__name__} has no blocks to checkpoint; set grad_checkpointing: false")
    if cfg.fast_pool:
        enable_fast_pool(model)
    model.fastpath_config = cfg
    if not defer_compile:
        compile_model(model, cfg.compile)
    return model


def _convert_neurons(model: nn.Module, impl: str) -> None:
    """Neurons to ``impl``; those it does not cover keep spikingjelly's own forward, said in one line."""
    if impl == "triton":
        from utils.verify import triton_cpu  # noqa: F401  (registers neuron impl 'triton')
    convert_neurons(model, impl)
    rest: Dict[str, int] = {}
    for _, m in spiking_modules(model):
        if implementation_of(m) != impl:
            rest[neuron_name(m)] = rest.get(neuron_name(m), 0) + 1
    if rest:
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(rest.items()))
        _warn_once(f"fast path: no neuron_impl '{impl}' for {what} neurons (it exists for LIF/IF); they run "
                   f"spikingjelly's own multi-step forward, uncompiled unless the whole model is")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """A warning a process gives once (the memory planner prepares a model before the real one)."""
    _logger.warning(message)


def compile_model(model: nn.Module, scope) -> nn.Module:
    """``torch.compile`` ``model`` in place over ``scope`` (``'model'``, ``'blocks'``, ``'neurons'`` or False).

    Under DDP call it after wrapping, on the inner module: its first compiled call then runs inside DDP's
    forward, where dynamo splits the graph at DDP's gradient buckets so all-reduce overlaps backward.
    """
    if scope == "model":
        model.compile()
    elif scope == "blocks":
        for _, unit in block_modules(model):
            unit.compile()
    elif scope == "neurons":
        _compile_neurons(model)
    return model


def _compile_neurons(model: nn.Module):
    """Compile only the neuron loops: bitwise the eager torch neuron (fused charge/fire/reset
    forward and surrogate backward), convolutions and BatchNorm stay in eager ATen."""
    impl = getattr(getattr(model, "fastpath_config", None), "neuron_impl", None)
    # a neuron the configured impl does not cover keeps spikingjelly's forward, which is not compiled
    neurons = [m for _, m in spiking_modules(model) if impl is None or implementation_of(m) == impl]
    # one graph per (shape, threshold) otherwise; dynamic shapes keep the count small
    dcfg = torch._dynamo.config
    dcfg.recompile_limit = max(dcfg.recompile_limit, 64)
    for m in neurons:
        m.compile()


def prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Put a ``[B,C,H,W]`` batch in the layout the prepared model expects."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
