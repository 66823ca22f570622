"""Peak device memory of a training step or an inference batch, planned on CPU without allocating.

The model is the config check's meta-device build (``models.build_model(..., meta=True)``, once per process and
settings: a training start builds its model once for real and once on the meta device), given fake storage and run
under ``torch._subclasses.FakeTensorMode`` (tensors with shapes, dtypes and strides but no data), and a
``TorchDispatchMode`` follows every storage the step creates: its bytes are added when it appears and removed when
Python frees it, so the running sum and its high-water mark are what ``torch.cuda.max_memory_allocated`` reports for
the same step -- parameters, gradients, optimizer state, inputs, activations saved for backward and temporaries. A
training step is the one ``benchmark.py`` times (forward + cross-entropy + backward + optimizer step + neuron reset),
run so that it starts with the gradients and optimizer state of a previous step alive, as every later step does.

What is modelled, and what is not:

* the fast path's memory options (``grad_checkpointing``, ``compact_spikes``, ``fast_conv``) run as they
  would; a binary convolution input (``compact_spikes``) is recognised by where it comes from (a
  neuron's output, or a view, copy or pooling of one), since fake tensors hold no values;
* compiled neurons (``compile`` in the fast path) are planned as keeping for backward what the compiler
  keeps (:class:`_FusedNeuron`; it recomputes the time loop); the rest of the network runs eagerly, also under
  whole-model compile, whose own savings are not modelled;
* mixed precision runs under CPU autocast, whose op lists match CUDA's for convolutions, matmuls and
  BatchNorm; fp16 is planned as bf16 (same sizes);
* for a CUDA device, allocations are rounded to the caching allocator's 512-byte blocks and the
  optimizer uses the foreach kernels (CUDA's default); the CUDA context (~0.5 GB), cuDNN workspaces
  and allocator fragmentation are not tensors and are not counted: :data:`CUDA_OVERHEAD` is what
  :func:`fits` adds for them.

``plan_step`` plans explicit settings, ``plan_memory(cfg)`` the step of a resolved training config
(``train.py``, ``python -m utils.tools.doctor``), ``max_batch`` the largest batch that fits a device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from timm.optim import create_optimizer_v2
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

from models import ModelError, build_model, input_spec, reset_net
from models.neurons import implementation_of, spiking_modules
from utils import data as data_lib
from utils.training.fastpath import EAGER, FastPathConfig, prepare_model, resolve_config

__all__ = ["MemoryPlan", "MemoryPlanError", "plan_step", "plan_memory", "fastpath_settings", "max_batch", "fit_options",
           "fits", "parse_bytes", "format_bytes", "device_memory_warning", "CUDA_OVERHEAD", "CUDA_BLOCK"]

MiB = 2 ** 20
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to a multiple of this
CUDA_OVERHEAD = 1024 * MiB  # CUDA context, cuDNN/cuBLAS workspaces and fragmentation: not tensors, not planned

aten = torch.ops.aten


class MemoryPlanError(ValueError):
    """A setting the planner cannot plan; the message names it and the fix."""


@dataclasses.dataclass
class MemoryPlan:
    """Bytes of one planned step. ``peak`` is the high-water mark of all tensors together; the parts
    are what is alive at the start of a steady-state step, ``activations`` the rest of the peak
    (saved activations, temporaries, the gradients not yet freed)."""

    model: str
    mode: str
    batch: int
    T: Optional[int]
    img_size: int
    amp: str
    grad_checkpointing: bool
    compact_spikes: bool
    neuron_impl: str
    compile: Any
    device: str
    weights: int = 0  # parameters and buffers
    grads: int = 0
    optimizer: int = 0  # optimizer state (AdamW: two moments and a step count per parameter)
    ema: int = 0  # the EMA copy of the weights
    inputs: int = 0  # the batch and its labels
    peak: int = 0
    estimate: str = ""  # how a large plan was extrapolated from smaller ones ("": planned as is)

    @property
    def activations(self) -> int:
        return max(self.peak - self.weights - self.grads - self.optimizer - self.ema - self.inputs, 0)

    @property
    def total(self) -> int:
        return self.peak

    def as_dict(self) -> Dict[str, Any]:
        """Settings and MB figures (one JSON line of ``benchmark.py --plan-memory``)."""
        settings = {k: getattr(self, k) for k in ("model", "mode", "batch", "T", "img_size", "amp",
                                                 "grad_checkpointing", "compact_spikes", "neuron_impl", "device")}
        settings["compile"] = self.compile or "none"
        mb = {f"{k}_mb": round(getattr(self, k) / MiB, 1)
              for k in ("weights", "grads", "optimizer", "ema", "inputs", "activations", "total")}
        return {**settings, **mb, **({"estimate": self.estimate} if self.estimate else {})}

    def describe(self) -> str:
        """A few lines: the settings, then each part and the total in MB."""
        head = (f"{self.model} {self.mode}  batch {self.batch}  T {self.T}  {self.img_size}x{self.img_size}  "
                f"amp {self.amp}  grad_checkpointing {self.grad_checkpointing}  compact_spikes "
                f"{self.compact_spikes}  neurons {self.neuron_impl}  compile {self.compile or 'none'}  "
                f"({self.device})")
        parts = [("weights", self.weights), ("gradients", self.grads), ("optimizer state", self.optimizer),
                 ("EMA weights", self.ema), ("inputs", self.inputs), ("activations (at peak)", self.activations),
                 ("total (peak of tensors)", self.peak)]
        lines = [head] + [f"  {name:<24}{n / MiB:>12,.1f} MB" for name, n in parts if n or name[0] == "t"]
        return "\n".join(lines + ([f"  ({self.estimate})"] if self.estimate else []))


# ----------------------------------------------------------------------------- tracking
class _StorageTracker(TorchDispatchMode):
    """Running sum and high-water mark of the bytes of every live storage the ops create.

    A storage is counted once, when first seen, and uncounted when Python frees it (a weak
    reference's callback). ``binary`` holds the storages known to hold only 0/1 (neuron spikes and
    what is copied, viewed or pooled from them): ``aten.equal`` against such a tensor answers True,
    which is how the fast path's ``compact_spikes`` test runs without values.
    """

    _BINARY_KEEPING = {aten.clone.default, aten._to_copy.default, aten.max_pool2d_with_indices.default,
                       aten.max_pool1d_with_indices.default, aten.cat.default, aten.stack.default,
                       aten.contiguous.default, aten.flatten.using_ints, aten.index_select.default}

    def __init__(self, block: int = 1, cpu_neuron_ops: bool = False):
        super().__init__()
        self.block = block
        # spikingjelly's CPU operator stacks its outputs from per-step lists: twice its outputs at its peak
        self.doubled_ops = _spikingjelly_cpu_forward_ops() if cpu_neuron_ops else set()
        self.live: Dict[int, Tuple[weakref.ref, int]] = {}
        self.binary: set = set()
        self.current = 0
        self.peak = 0

    def nbytes(self, t: torch.Tensor) -> int:
        n = t.untyped_storage().nbytes()
        return -(-n // self.block) * self.block

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        n = self.nbytes(t)

        def freed(_, key=key, n=n):
            if self.live.pop(key, None) is not None:
                self.current -= n
                self.binary.discard(key)

        self.live[key] = (weakref.ref(storage, freed), n)
        self.current += n
        self.peak = max(self.peak, self.current)

    def is_binary(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t.untyped_storage()) in self.binary

    def mark_binary(self, t: torch.Tensor) -> None:
        self.track(t)
        self.binary.add(id(t.untyped_storage()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.equal.default:  # no values: a binary tensor equals its bool round trip
            return self.is_binary(args[0]) or self.is_binary(args[1])
        out = func(*args, **kwargs)
        tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        for t in tensors:
            self.track(t)
        if func in self.doubled_ops:
            self.peak = max(self.peak, self.current + _state_bytes(self, tensors))
        first = next((a for a in tree_leaves(args) if isinstance(a, torch.Tensor)), None)
        if not self.is_binary(first):
            return out
        if func.overloadpacket.__name__.endswith("_"):  # written in place: no longer known to be 0/1
            self.binary.discard(id(first.untyped_storage()))
        elif tensors and (func in self._BINARY_KEEPING or tensors[0].untyped_storage() is first.untyped_storage()):
            self.binary.add(id(tensors[0].untyped_storage()))  # a copy, pooling or view of spikes
        return out


def _spikingjelly_cpu_forward_ops() -> set:
    ops = set()
    for namespace in ("sj_lif", "sj_if"):
        try:
            ops.add(getattr(torch.ops, namespace).forward.default)
        except (AttributeError, RuntimeError):  # another spikingjelly version: planned without the transient
            pass
    return ops


# ------------------------------------------------------------------- compiled neurons, planned
class _FusedNeuron(torch.autograd.Function):
    """The memory of a compiled neuron loop, as torch.compile's partitioner keeps it for backward (read
    with saved-tensor hooks, torch 2.14): a float32 input, max(T, 2) new float32 steps; a bf16/fp16
    input, the input itself. The time loop is recomputed in backward."""

    @staticmethod
    def forward(ctx, x_seq, run):
        if x_seq.dtype == torch.float32:
            ctx.save_for_backward(*[torch.empty_like(x_seq[0]) for _ in range(max(x_seq.shape[0], 2))])
        else:
            ctx.save_for_backward(x_seq)
        return run(x_seq)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad, memory_format=torch.contiguous_format), None


def _fused_neuron_forward(node, x_seq, *args, **kwargs):
    run = functools.partial(type(node).multi_step_forward, node)
    if not (torch.is_grad_enabled() and x_seq.requires_grad) or args or kwargs:
        return run(x_seq, *args, **kwargs)
    return _FusedNeuron.apply(x_seq, run)


# ------------------------------------------------------------------------------ planning
def _autocast(amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise MemoryPlanError(f"amp must be one of ('none', 'bf16', 'fp16'), got {amp!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16)  # fp16 planned as bf16: same sizes


def _state_bytes(tracker: _StorageTracker, tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in seen:
            seen.add(id(t.untyped_storage()))
            total += tracker.nbytes(t)
    return total


def _fake_mode():
    return FakeTensorMode(allow_non_fake_inputs=True)


def plan_step(model_name: str, T: Optional[int] = None, batch: int = 32, img_size: Optional[int] = None,
              amp: str = "none", grad_checkpointing: bool = False, compact_spikes: bool = False,
              mode: str = "train", *, model_kwargs: Optional[Dict[str, Any]] = None,
              num_classes: Optional[int] = None, neuron_impl: str = "torch", compile: Any = "neurons",
              fast_conv: bool = True, fast_pool: Optional[bool] = None, channels_last: bool = False,
              optimizer: str = "adamw", ema: bool = False, ddp: bool = False, device: str = "cuda") -> MemoryPlan:
    """Plan the peak memory of one step of ``model_name`` (any registered model) in seconds on CPU.

    ``mode``: ``'train'`` (forward + loss + backward + optimizer step, steady state) or ``'infer'``
    (one batch under ``inference_mode``). Fast-path settings as in ``utils.training.fastpath.FastPathConfig``
    (``neuron_impl='spikingjelly', compile=False, fast_conv=False`` is the plain eager path).
    ``optimizer``: a timm optimizer name. ``ema`` adds a weight copy; ``ddp`` DistributedDataParallel's
    gradient buckets (one more gradient copy). ``device``: ``'cuda'`` (512-byte blocks, foreach optimizer,
    no channels-last pooling) or ``'cpu'`` (as ``benchmark.py``'s ``tensor_peak_mb``).
    """
    if mode not in ("train", "infer"):
        raise MemoryPlanError(f"mode must be 'train' or 'infer', got {mode!r}")
    if batch < 1:
        raise MemoryPlanError(f"batch must be >= 1, got {batch}")
    dev = torch.device(device).type
    if dev not in ("cuda", "cpu"):
        raise MemoryPlanError(f"device must be 'cuda' or 'cpu', got {device!r}")
    compile = compile if compile not in (None, "none") else False
    if (T or 0) > EXACT_T or (T or 4) * batch > EXACT_WORK:
        settings = dict(img_size=img_size, amp=amp, grad_checkpointing=grad_checkpointing,
                        compact_spikes=compact_spikes, mode=mode, model_kwargs=model_kwargs, num_classes=num_classes,
                        neuron_impl=neuron_impl, compile=compile, fast_conv=fast_conv, fast_pool=fast_pool,
                        channels_last=channels_last, optimizer=optimizer, ema=ema, ddp=ddp, device=device)
        return _extrapolated(model_name, T, batch, settings)
    key = json.dumps([model_name, T, batch, img_size, amp, grad_checkpointing, compact_spikes, mode,
                      model_kwargs or {}, num_classes, neuron_impl, compile, fast_conv, fast_pool, channels_last,
                      optimizer, ema, ddp, dev], sort_keys=True, default=str)
    if key not in _PLANS:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[key] = _plan(model_name, T, batch, img_size, amp, grad_checkpointing, compact_spikes, mode,
                            model_kwargs, num_classes, neuron_impl, compile, fast_conv, fast_pool, channels_last,
                            optimizer, ema, ddp, dev)
    return dataclasses.replace(_PLANS[key])


_PLANS: Dict[str, MemoryPlan] = {}  # plans already made in this process (a batch search revisits them)
# Larger steps are extrapolated: planning runs every op of the step, and its time grows with T and T x batch.
EXACT_T, EXACT_WORK = 8, 1024


def _extrapolated(model_name: str, T: Optional[int], batch: int, settings: Dict[str, Any]) -> MemoryPlan:
    """The plan of a step too large to run op by op, from plans at T in (EXACT_T / 2, EXACT_T) (when T is larger)
    and two batches within EXACT_WORK (when the batch is larger): every byte count is affine in T, in the batch
    and in their product (activations), so a bilinear extension of the four corners gives it."""
    Ts = [T] if T is None or T <= EXACT_T else [EXACT_T // 2, EXACT_T]
    top = max(EXACT_WORK // (Ts[-1] or 4), 2)
    Bs = [batch] if batch <= top else [top // 2, top]
    grid = {(t, b): plan_step(model_name, T=t, batch=b, **settings) for t in Ts for b in Bs}

    def along(points: List[Tuple[int, float]], x: int) -> float:
        (x0, v0), (x1, v1) = points[0], points[-1]
        return v0 if x1 == x0 else v0 + (v1 - v0) * (x - x0) / (x1 - x0)

    last = grid[(Ts[-1], Bs[-1])]
    steps = T if T is not None else last.T
    fields = {f: int(round(along([(t or 0, along([(b, getattr(grid[(t, b)], f)) for b in Bs], batch)) for t in Ts],
                                 steps or 0)))
              for f in ("weights", "grads", "optimizer", "ema", "inputs", "peak")}
    how = " and ".join(f"{name} {', '.join(map(str, v))}" for name, v in (("T", Ts), ("batch", Bs)) if len(v) > 1)
    return dataclasses.replace(last, batch=batch, T=steps, **fields,
                               estimate=f"extrapolated linearly from plans at {how}")


def _plan(model_name, T, batch, img_size, amp, grad_checkpointing, compact_spikes, mode, model_kwargs, num_classes,
          neuron_impl, compile, fast_conv, fast_pool, channels_last, optimizer, ema, ddp, dev) -> MemoryPlan:
    kwargs = dict(model_kwargs or {})
    if T is not None:
        kwargs["T"] = T
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    train = mode == "train"
    tracker = _StorageTracker(CUDA_BLOCK if dev == "cuda" else 1, cpu_neuron_ops=dev == "cpu")
    try:
        model = build_model(model_name, meta=True, **kwargs)  # the config check's build: built once per process
        spec = input_spec(model)
    except ModelError as err:
        raise MemoryPlanError(f"cannot build {model_name!r}: {err}") from None
    with _fake_mode():
        _fake_storage(model)
        steps = getattr(model, "T", None)
        img = img_size or spec.img_size
        # under whole-model compile inductor derives the convolution backward (same saved tensors as eager)
        # channels-last weights: same bytes; fake parameters cannot be converted in place (weak references)
        fp = FastPathConfig(neuron_impl=neuron_impl, channels_last=False, compile=False, fold_bn=False,
                            grad_checkpointing=grad_checkpointing, fast_conv=fast_conv and compile != "model",
                            compact_spikes=compact_spikes,
                            fast_pool=(dev == "cpu") if fast_pool is None else fast_pool)
        prepare_model(model, mode, config=fp)  # fold_bn needs values: planned unfolded (inference only)
        applied = model.fastpath_config
        if compile and neuron_impl == "torch":
            for _, m in spiking_modules(model):
                if implementation_of(m) != "torch":  # no fused loop for this neuron: it runs as it is
                    continue
                m.multi_step_forward = functools.partial(_fused_neuron_forward, m)
        hooks = [m.register_forward_hook(lambda mod, inp, out: tracker.mark_binary(out))
                 for _, m in spiking_modules(model)]
        x = torch.empty(spec.shape(batch, img, steps))
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.zeros(batch, dtype=torch.long)
        opt = _optimizer(model, optimizer, foreach=dev == "cuda") if train else None
        with tracker:
            for t in [*model.parameters(), *model.buffers(), x, y]:
                tracker.track(t)
            copies = []
            if ema:
                copies.append([p.detach().clone() for p in model.state_dict().values()])
            if ddp and train:
                copies.append([torch.empty_like(p) for p in model.parameters() if p.requires_grad])
            peak = _run_step(model, x, y, opt, amp, tracker)
        weights = _state_bytes(tracker, [*model.parameters(), *model.buffers()])
        for h in hooks:
            h.remove()
        plan = MemoryPlan(
            model=model_name, mode=mode, batch=batch, T=steps, img_size=img, amp=amp,
            grad_checkpointing=applied.grad_checkpointing, compact_spikes=applied.compact_spikes,
            neuron_impl=neuron_impl, compile=compile or False, device=dev, weights=weights,
            grads=_state_bytes(tracker, [p.grad for p in model.parameters() if p.grad is not None]),
            optimizer=_state_bytes(tracker, [v for s in opt.state.values() for v in s.values()]) if opt else 0,
            ema=sum(_state_bytes(tracker, c) for c in copies), inputs=_state_bytes(tracker, [x, y]),
            peak=peak)
    return plan


def _fake_storage(model: nn.Module) -> None:
    """Under the active fake mode: fake CPU tensors of the same sizes and strides for a meta-device model's parameters,
    buffers and plain tensor attributes (``to_empty``'s ``empty_like`` of each meta tensor is 4x slower)."""
    model._apply(_fake_like)
    for m in model.modules():
        m.__dict__.update({k: _fake_like(v) for k, v in vars(m).items() if isinstance(v, torch.Tensor) and v.is_meta})


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")


def _optimizer(model: nn.Module, name: str, foreach: bool):
    try:
        return create_optimizer_v2(model, opt=name, lr=1e-4, weight_decay=0.05, filter_bias_and_bn=True,
                                   **({"foreach": foreach} if name.lower() in ("adamw", "adam", "sgd") else {}))
    except (ValueError, TypeError) as err:
        raise MemoryPlanError(f"optimizer {name!r}: {err}") from None


def _run_step(model: nn.Module, x, y, opt, amp: str, tracker: _StorageTracker) -> int:
    """One step under ``tracker``; returns the peak bytes of a steady-state step.

    Training: the gradients of a previous step are alive at the start (``zero_grad`` comes after the
    forward, as in ``benchmark.py``); its optimizer state, created by this first ``opt.step()``, would have
    been alive through forward and backward too, so it is added to their peak.
    """
    if opt is None:
        with torch.inference_mode(), _autocast(amp):
            model(x)
        reset_net(model)
        return tracker.peak
    for p in model.parameters():
        p.grad = torch.empty_like(p) if p.requires_grad else None
    with _autocast(amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    del loss
    forward_backward, tracker.peak = tracker.peak, tracker.current
    opt.step()
    reset_net(model)
    state = _state_bytes(tracker, [v for s in opt.state.values() for v in s.values()])
    return max(forward_backward + state, tracker.peak)


def plan_memory(cfg) -> int:
    """Planned peak device bytes of one training step of the resolved training config ``cfg`` (``train.py``'s).

    Per process: ``batch_size`` samples (gradient accumulation does not change it), the fast path as
    ``train.py`` resolves it for CUDA, the configured optimizer, EMA, and DDP's gradient buckets when
    ``WORLD_SIZE`` > 1. The tensors only: add :data:`CUDA_OVERHEAD` for the device (:func:`fits`).
    """
    return _plan_for_config(cfg).peak


def _plan_for_config(cfg, batch: Optional[int] = None, **changes) -> MemoryPlan:
    return plan_step(**{**_config_settings(cfg), **({"batch": batch} if batch else {}), **changes})


def fastpath_settings(fp) -> Dict[str, Any]:
    """``plan_step`` keyword arguments for a ``fastpath.FastPathConfig`` (what ``prepare_model`` gets)."""
    return dict(neuron_impl=fp.neuron_impl, compile=fp.compile, channels_last=fp.channels_last,
                fast_conv=fp.fast_conv, grad_checkpointing=fp.grad_checkpointing, compact_spikes=fp.compact_spikes)


def _config_settings(cfg) -> Dict[str, Any]:
    """``plan_step`` keyword arguments for a resolved training config."""
    device = "cpu" if cfg.device == "cpu" else "cuda"
    if cfg.fastpath:
        fp, _ = resolve_config("train", cfg.amp, device=device, channels_last=cfg.channels_last or None,
                               grad_checkpointing=cfg.grad_checkpointing or None,
                               compact_spikes=cfg.compact_spikes or None, compile="model" if cfg.compile else None)
    else:
        fp = dataclasses.replace(EAGER, channels_last=cfg.channels_last, grad_checkpointing=cfg.grad_checkpointing)
    fast = fastpath_settings(fp)
    num_classes = cfg.num_classes
    if not num_classes:
        try:
            num_classes = data_lib.dataset_info(cfg.dataset)["num_classes"]
        except Exception:  # an unknown dataset is reported by the data checks; the head hardly matters here
            num_classes = None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return dict(model_name=cfg.model, T=cfg.T, batch=cfg.batch_size, img_size=cfg.img_size, amp=cfg.amp,
                mode="train", model_kwargs=dict(cfg.model_kwargs), num_classes=num_classes, optimizer=cfg.opt,
                ema=cfg.model_ema, ddp=world > 1, device=device, **fast)


# --------------------------------------------------------------------------- fitting a device
_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "kib": 2 ** 10, "m": MiB, "mb": MiB, "mib": MiB,
          "g": 2 ** 30, "gb": 2 ** 30, "gib": 2 ** 30, "t": 2 ** 40, "tb": 2 ** 40, "tib": 2 ** 40}


def parse_bytes(text: "str | int | float") -> int:
    """``'80GB'``, ``'24 GiB'``, ``'15431MB'``, ``'1.5g'`` or a number of bytes -> bytes (binary units)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise MemoryPlanError(f"cannot read the memory size {text!r}: write a number and a unit, e.g. 80GB, "
                              f"24GiB or 15431MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int) -> str:
    return f"{n / MiB:,.0f} MB"


def fits(plan: "MemoryPlan | int", device_bytes: int, overhead: int = CUDA_OVERHEAD) -> bool:
    """Whether a plan's tensors plus ``overhead`` (context, workspaces, fragmentation) fit ``device_bytes``."""
    peak = plan.peak if isinstance(plan, MemoryPlan) else int(plan)
    return peak + overhead <= device_bytes


def max_batch(settings: Dict[str, Any], device_bytes: int, overhead: int = CUDA_OVERHEAD,
              limit: int = 1 << 16) -> Tuple[int, Optional[MemoryPlan]]:
    """The largest batch (up to ``limit``) whose plan fits ``device_bytes``, and its plan; ``(0, None)`` if
    not even batch 1 fits. ``settings``: :func:`plan_step` keyword arguments (``batch`` ignored).

    Memory grows almost linearly with the batch: batches 1 and 2 give the first guess, a binary search
    between a batch that fits and one that does not settles it (typically 4-6 plans).
    """
    settings = {k: v for k, v in settings.items() if k != "batch"}
    plans: Dict[int, MemoryPlan] = {}

    def ok(b: int) -> bool:
        if b not in plans:
            plans[b] = plan_step(batch=b, **settings)
        return fits(plans[b], device_bytes, overhead)

    if not ok(1):
        return 0, None
    lo, hi = 1, None  # lo fits; hi does not (None: not found yet)
    if limit > 1 and not ok(2):
        hi = 2
    elif limit > 1:
        lo = 2
        slope = max(plans[2].peak - plans[1].peak, 1)
        guess = min(max(1 + (device_bytes - overhead - plans[1].peak) // slope, 3), limit)
        for b in (guess, guess + 1):
            if b > limit:
                break
            if not ok(b):
                hi = b
                break
            lo = b
    while hi is None and lo < limit:  # grow until a batch does not fit
        b = min(lo * 2, limit)
        if ok(b):
            lo = b
        else:
            hi = b
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, plans[lo]


def fit_options(settings: Dict[str, Any], device_bytes: int,
                overhead: int = CUDA_OVERHEAD) -> List[Tuple[str, MemoryPlan]]:
    """When ``settings`` do not fit: the changes that make them fit, each with its plan.

    Tried: grad checkpointing, compact spikes, both; then the largest batch that fits with gradient
    accumulation making up the batch (with the memory options, too, if needed).
    """
    batch = settings["batch"]
    out = []
    variants = [("--grad-checkpointing", dict(grad_checkpointing=True)),
                ("--compact-spikes", dict(compact_spikes=True)),
                ("--grad-checkpointing --compact-spikes", dict(grad_checkpointing=True, compact_spikes=True))]
    for label, change in variants:
        if all(settings.get(k) == v for k, v in change.items()):
            continue
        p = plan_step(**{**settings, **change})
        if fits(p, device_bytes, overhead):
            out.append((label, p))
    for label, change in [("", {})] + variants:
        merged = {**settings, **change}
        if change and all(settings.get(k) == v for k, v in change.items()):
            continue
        b, p = max_batch(merged, device_bytes, overhead, limit=max(batch - 1, 1))
        if b >= 1 and p is not None and b < batch:
            accum = -(-batch // b)
            micro = -(-batch // accum)  # the smallest micro-batch with this many steps
            p = p if micro == b else plan_step(**{**merged, "batch": micro})
            out.append((f"{label} --batch-size {micro} --accum-steps {accum}".strip(), p))
            break
    return out


def device_memory_warning(cfg, device: torch.device) -> Optional[str]:
    """For ``train.py``: a warning when the planned step does not fit the CUDA ``device``, else None.

    CPU runs and planning failures return None (the plan is advice; it never stops a run).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        total = torch.cuda.get_device_properties(device).total_memory
        plan = _plan_for_config(cfg)
    except Exception:
        return None
    if fits(plan, total):
        return None
    return (f"warning: the planned peak memory of a training step, {format_bytes(plan.peak)} of tensors + "
            f"{format_bytes(CUDA_OVERHEAD)} for the CUDA context, exceeds {torch.cuda.get_device_name(device)}'s "
            f"{format_bytes(total)}; the run will likely stop out of memory. See what fits: python benchmark.py "
            f"--plan-memory --max-batch --model {cfg.model} --T {plan.T} --img-size {plan.img_size} "
            f"--amp {plan.amp} --device-memory {total / 2 ** 30:.0f}GB")
