"""Training engine shared by every dataset: :func:`build_training` (model, optimizer, schedule, scaler,
EMA, loss in one step), :func:`train_step` (one batch), :func:`train_one_epoch` (the loop around it), eval.

The fast-path switches are resolved by ``utils.training.fastpath.resolve_config`` and applied by
``utils.training.fastpath.prepare_model``; mixed precision is :func:`amp_context`. Every forward pass is followed
by ``models.reset_net`` so no membrane state leaks between batches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from tqdm import tqdm

import models
from models import ModelError
from models import build_model as build
from utils.config import ConfigError
from utils.data import DATA_OPTIONS
from utils.training import fastpath as fp_lib
from utils.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from utils.training.distributed import all_reduce_sum
from utils.training.stop import NonFiniteLossError

__all__ = ["NonFiniteLossError", "amp_context", "eval_amp_context", "make_scaler", "place_model", "Training",
           "build_training", "restore_training", "training_state", "build_optimizer", "build_scheduler", "set_epoch_lr",
           "start_epoch_schedule", "build_train_loss", "EpochStart", "train_step", "train_one_epoch", "evaluate",
           "current_lr", "resolve_lr"]


def _reset_net(model: nn.Module) -> None:
    models.reset_net(model)


# ----------------------------------------------------------------------------------------------
# mixed precision
def amp_context(mode: str, device: torch.device, key: str = "amp") -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``amp`` = none | bf16 | fp16: ``with amp_context(amp, device)():``."""
    if mode not in ("none", "bf16", "fp16"):
        raise ValueError(f"{key} must be one of ('none', 'bf16', 'fp16'), got {mode!r}")
    device = torch.device(device)
    if mode == "none":
        return contextlib.nullcontext
    if mode == "fp16" and device.type != "cuda":
        flag = "--" + key.replace("_", "-")
        raise ValueError(f"{key} fp16 needs a CUDA device; on CPU use {flag} bf16 or {flag} none")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def eval_amp_context(cfg, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The evaluation's autocast: ``cfg.eval_amp``, or the training's ``cfg.amp`` where it is ``same``."""
    return amp_context(cfg.amp, device) if cfg.eval_amp == "same" else amp_context(cfg.eval_amp, device, "eval_amp")


def make_scaler(mode: str, device: torch.device):
    """A GradScaler for fp16 on CUDA, else None (bf16 needs no loss scaling)."""
    if mode == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# ----------------------------------------------------------------------------------------------
# model / optimizer / schedule / loss
def place_model(model: nn.Module, device: torch.device, channels_last: bool = False,
                sync_bn: bool = False) -> nn.Module:
    """Move ``model`` to ``device`` (SyncBatchNorm first when ``sync_bn``; channels-last when asked)."""
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclasses.dataclass
class Training:
    """Everything :func:`train_step` and the epoch loop need (objects, settings, the update count), built in
    one step by :func:`build_training`."""

    model: nn.Module  # what trains (DDP-wrapped when distributed)
    eval_model: nn.Module  # the same model, unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler, or None for a constant lr
    scaler: Any  # GradScaler (fp16 on CUDA) or None
    ema: Any  # timm ModelEmaV3 or None
    loss_fn: nn.Module
    mixup_fn: Optional[Callable]
    autocast: Callable[[], contextlib.AbstractContextManager]  # training passes
    fastpath: Any  # the utils.training.fastpath.FastPathConfig that applied, or None (plain eager path)
    channels_last: bool  # inputs go channels-last
    lr: float
    effective_batch: int
    updates_per_epoch: int
    total_epochs: int
    n_params: int
    warnings: list = dataclasses.field(default_factory=list)
    eval_autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # eval_amp
    # how a batch becomes an optimizer update (train_step), and the updates done so far
    device: torch.device = torch.device("cpu")
    world_size: int = 1
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    sched_on_updates: bool = False
    num_updates: int = 0


def build_model(cfg, num_classes: int) -> nn.Module:
    """The configured model (:func:`models.build_model` of ``cfg.model``, ``cfg.T``, ``cfg.model_kwargs``,
    ``cfg.neuron_impl``, ``cfg.pretrained``); bad names or kwargs raise ``ConfigError``."""
    kwargs = cfg.model_kwargs or {}
    if "triton" in (cfg.neuron_impl, kwargs.get("neuron_impl"), kwargs.get("impl")):
        import utils.verify.triton_cpu  # noqa: F401  (registers neuron impl 'triton'; only when asked for)
    pretrained = cfg.pretrained
    _apply_weights_T(cfg, pretrained)
    try:
        return build(cfg.model, T=cfg.T, num_classes=num_classes, model_kwargs=cfg.model_kwargs,
                     neuron_impl=cfg.neuron_impl, pretrained=pretrained)
    except ModelError as err:
        raise ConfigError(str(err).replace("rejected kwargs", "rejected model_kwargs")) from None
    except (OSError, RuntimeError) as err:  # pretrained weights missing, not downloadable or not fitting
        if not pretrained:
            raise
        raise ConfigError(f"--pretrained {cfg.model}: {err} (without network: fetch the file with "
                          f"imagenet/checkpoints/download.sh and pass it as --initial-checkpoint / --checkpoint)") \
            from None


def _apply_weights_T(cfg, pretrained: bool) -> None:
    """A pretrained tag (``maxformer_10_768.t1_in1k``) or ``pretrained`` sets ``cfg.T`` to the weights' T when
    T was left at its default; an explicit other T is kept (with a note)."""
    if not (pretrained or "." in cfg.model):
        return

    try:
        weights_T = getattr(get_pretrained_cfg(cfg.model), "T", None)
    except RuntimeError:  # unknown tag: create_model says which tags exist
        return
    if weights_T is None or weights_T == cfg.T:
        return
    if cfg.T == DATA_OPTIONS["T"].default:
        cfg.T = weights_T
    else:
        logging.getLogger(__name__).warning(f"{cfg.model}: the weights were trained with T={weights_T}; "
                                            f"running with the configured T={cfg.T}")


def build_training(cfg, model: nn.Module, device: torch.device, world_size: int, train_batches: int,
                   mixup_fn: Optional[Callable] = None, state: Optional[Dict[str, Any]] = None) -> Training:
    """Model on its device, fast path, optimizer, schedule, scaler, EMA and loss for ``cfg``.

    ``train_batches``: loader batches per epoch and process. ``state`` (a training checkpoint) is restored
    with :func:`restore_training` after the EMA copy and before the fast path. Bad settings raise
    ``ConfigError``.
    """
    warnings = []
    fastpath = None
    if cfg.fastpath:
        try:
            fastpath, warning = fp_lib.resolve_config(
                "train", cfg.amp, device=device, channels_last=cfg.channels_last or None,
                grad_checkpointing=cfg.grad_checkpointing or None, compact_spikes=cfg.compact_spikes or None,
                compile="model" if cfg.compile else None,
                neuron_impl=None if cfg.neuron_impl == "auto" else cfg.neuron_impl)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        warnings += [warning] if warning else []
    elif cfg.compile:
        raise ConfigError("compile: true needs fastpath: true (spikingjelly's neuron operator is opaque to "
                          "torch.compile); drop compile or set fastpath: true")
    elif cfg.compact_spikes:
        raise ConfigError("compact_spikes: true needs fastpath: true (it is part of utils.training.fastpath); "
                          "drop compact_spikes or set fastpath: true")
    if cfg.neuron_impl == "triton":
        from utils.verify.triton_cpu import check_device  # lazy: importing it registers impl 'triton'
        try:
            check_device(device)
        except (ImportError, RuntimeError) as err:
            raise ConfigError(f"neuron_impl: triton: {err}") from None
    try:
        autocast, eval_autocast = amp_context(cfg.amp, device), eval_amp_context(cfg, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    n_params = sum(p.numel() for p in model.parameters())
    distributed = world_size > 1
    model = place_model(model, device, cfg.channels_last and fastpath is None, cfg.sync_bn and distributed)
    if fastpath is None and cfg.grad_checkpointing and fp_lib.enable_grad_checkpointing(model) == 0:
        raise ConfigError(f"{type(model).__name__} has no blocks to checkpoint; set grad_checkpointing: false")

    effective_batch = cfg.batch_size * cfg.accum_steps * world_size
    lr = resolve_lr(cfg, effective_batch)
    try:
        optimizer = build_optimizer(model, cfg, lr)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer '{cfg.opt}': {err}") from None
    updates_per_epoch = -(-(min(train_batches, cfg.max_train_batches or train_batches)) // cfg.accum_steps)
    try:
        sched, total_epochs = build_scheduler(optimizer, cfg, updates_per_epoch)
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"scheduler '{cfg.sched}': {err}") from None
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    t = Training(model=model, eval_model=model, optimizer=optimizer, scheduler=sched,
                 scaler=make_scaler(cfg.amp, device),
                 ema=ema, loss_fn=build_train_loss(cfg, mixup_fn is not None).to(device), mixup_fn=mixup_fn,
                 autocast=autocast, eval_autocast=eval_autocast, fastpath=None,
                 channels_last=fastpath.channels_last if fastpath else cfg.channels_last,
                 lr=lr, effective_batch=effective_batch, updates_per_epoch=updates_per_epoch,
                 total_epochs=total_epochs, n_params=n_params, warnings=warnings, device=device,
                 world_size=world_size, accum_steps=cfg.accum_steps, clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                 sched_on_updates=cfg.sched_on_updates)
    if state is not None:
        restore_training(t, state)
    if fastpath is not None:  # in place: same parameters, so the optimizer is unaffected
        try:
            t.fastpath = fp_lib.prepare_model(model, "train", fastpath, defer_compile=True).fastpath_config
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if distributed:  # DDP first, then compile: all-reduce overlaps backward (utils.training.fastpath.compile_model)
        t.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.fastpath is not None:
        fp_lib.compile_model(model, t.fastpath.compile)
    return t


def restore_training(t: Training, state: Dict[str, Any]) -> None:
    """Load a training checkpoint into ``t``: weights, optimizer moments, scaler, EMA and the update count.

    The optimizer's hyperparameters (lr, weight decay, betas, ...) and the schedule stay those of the
    current config: the schedule is rebuilt from it and positioned by epoch/update count, so a changed
    ``lr``, ``epochs``, warm-up/cooldown or ``sched`` takes effect on resume.
    """
    load_checkpoint(t.eval_model, state, strict=True, key="state_dict")
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups]
    t.optimizer.load_state_dict(state["optimizer"])
    for group, hyper in zip(t.optimizer.param_groups, fresh):
        group.update(hyper)
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    if t.ema is not None:
        if "state_dict_ema" in state:
            load_checkpoint(t.ema.module, state, strict=True, key="state_dict_ema")
        else:
            t.ema.set(t.eval_model)
    t.num_updates = int(state.get("num_updates", 0))


def training_state(t: Training, **fields) -> Dict[str, Any]:
    """A resumable checkpoint of ``t`` (weights, optimizer, scaler, EMA, RNG) plus ``fields``."""
    unwrapped = getattr(t.eval_model, "_orig_mod", t.eval_model)
    state = {"version": 1, **fields, "state_dict": unwrapped.state_dict(), "optimizer": t.optimizer.state_dict(),
             "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
             "scaler": t.scaler.state_dict() if t.scaler is not None else None, "rng": capture_rng_state()}
    if t.ema is not None:
        state["state_dict_ema"] = t.ema.module.state_dict()
    return state


def resolve_lr(cfg, effective_batch: int) -> float:
    """``blr * effective_batch / 256`` when ``blr`` is set (ImageNet recipe), else ``lr``."""
    if cfg.blr:
        return cfg.blr * effective_batch / 256
    return cfg.lr


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """timm optimizer; weight decay 0 for 1-D parameters (BN, biases) and ``no_weight_decay()`` names."""
    kw: Dict[str, Any] = {}
    if cfg.opt_eps is not None:
        kw["eps"] = cfg.opt_eps
    if cfg.opt_betas:
        kw["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=True, **kw)


def build_scheduler(optimizer, cfg, updates_per_epoch: int):
    """timm scheduler and the total number of epochs (``epochs + cooldown_epochs``).

    ``epochs`` always counts warmup; with ``warmup_prefix`` the cosine runs over ``epochs - warmup``
    from the end of warmup (MAE/ImageNet recipe), otherwise over ``epochs`` from epoch 0 with the
    published small jump at the end of warmup (timm 0.6 CIFAR/event recipe).
    """
    total = cfg.epochs + cfg.cooldown_epochs
    if cfg.sched == "none":
        return None, total
    num = cfg.epochs - cfg.warmup_epochs if cfg.warmup_prefix else cfg.epochs
    sched, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=num, cooldown_epochs=cfg.cooldown_epochs,
        min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
        warmup_prefix=cfg.warmup_prefix, step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=updates_per_epoch)
    return sched, total


def set_epoch_lr(sched, epoch: int, updates_per_epoch: int, on_updates: bool) -> None:
    """Put the lr of the start of ``epoch`` into the optimizer (resume-safe: depends on epoch only)."""
    if sched is None:
        return
    if on_updates:
        sched.step_update(epoch * updates_per_epoch)
    else:
        sched.step(epoch)


def start_epoch_schedule(t: Training, epoch: int, resumed_inside: bool) -> float:
    """Put the lr of the start of ``epoch`` into the optimizer (resuming inside the epoch with a per-update
    schedule: then that of the update reached); returns the epoch's starting lr, for the log."""
    set_epoch_lr(t.scheduler, epoch, t.updates_per_epoch, t.sched_on_updates)
    lr = current_lr(t.optimizer)
    if resumed_inside and t.sched_on_updates and t.scheduler is not None:
        t.scheduler.step_update(t.num_updates)
    return lr


def current_lr(optimizer) -> float:
    """The largest lr of the optimizer's parameter groups."""
    return max(g["lr"] for g in optimizer.param_groups)


def build_train_loss(cfg, mixup_active: bool) -> nn.Module:
    """Soft-target CE with mixup/cutmix (targets carry the smoothing), else (smoothed) CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


# ----------------------------------------------------------------------------------------------
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclasses.dataclass
class EpochStart:
    """Where a pass over the loader starts: ``step`` batches in (the sampler already skips them), with
    ``loss_sum`` their summed loss and ``rng_state`` the RNG state after them (restored once the loader
    iterator exists). The default is the start of the epoch."""

    step: int = 0
    loss_sum: float = 0.0
    rng_state: Optional[Dict[str, Any]] = None


def train_step(t: Training, x: torch.Tensor, y: torch.Tensor, group: int, update: bool) -> torch.Tensor:
    """One batch: forward, loss, backward; with ``update`` also clipping, optimizer step, EMA and schedule.

    ``group`` is the number of batches of this accumulation group (the loss is divided by it); ``update``
    says the group is complete. Under DDP the gradients are synchronised only by the updating batch. The
    neuron state is reset after the backward pass. Returns the batch loss, detached, on the device.
    """
    model, scaler = t.model, t.scaler
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    with model.no_sync() if ddp and not update else contextlib.nullcontext():
        with t.autocast():
            loss = t.loss_fn(model(x), y)
        scaled = loss / group
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    _reset_net(model)
    if not update:
        return loss.detach()
    if t.clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(t.optimizer)
        dispatch_clip_grad([p for p in model.parameters() if p.requires_grad], t.clip_grad, mode=t.clip_mode)
    if scaler is not None:
        scaler.step(t.optimizer)
        scaler.update()
    else:
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.num_updates += 1
    if t.ema is not None:
        t.ema.update(getattr(model, "module", model), step=t.num_updates)
    if t.scheduler is not None and t.sched_on_updates:
        t.scheduler.step_update(t.num_updates)
    return loss.detach()


class _EpochMeter:
    """The loss summed on the device (read once per log interval) and the steady-state image rate of a pass."""

    def __init__(self, t: Training, loss_sum: float):
        self.device, self.world_size = t.device, t.world_size
        self.loss_sum = torch.full((), loss_sum, device=self.device, dtype=torch.float64)
        self.window = torch.zeros((), device=self.device, dtype=torch.float64)
        self.window_steps = self.seen = self.seen_first = 0
        self.t0, self.t_steady = time.perf_counter(), None

    def add(self, loss: torch.Tensor, images: int, first: bool) -> None:
        """Count one step; ``first``: the rate is measured from the end of this step on (synchronised)."""
        d = loss.to(torch.float64)
        self.loss_sum += d
        self.window += d
        self.window_steps += 1
        self.seen += images
        if first:
            _sync(self.device)
            self.t_steady, self.seen_first = time.perf_counter(), self.seen

    def window_mean(self) -> float:
        """Mean loss over all processes since the last call (one host sync)."""
        value = float(all_reduce_sum(self.window) / self.world_size) / self.window_steps
        self.window.zero_()
        self.window_steps = 0
        return value

    def rate(self, end: float) -> float:
        return (self.seen - self.seen_first) * self.world_size / max(end - self.t_steady, 1e-9)

    def result(self, n: int) -> Dict[str, Any]:
        total = float(all_reduce_sum(self.loss_sum)) / self.world_size  # syncs the device: timings are complete
        t_end = time.perf_counter()
        if self.t_steady is None:  # a single step: time it whole
            self.t_steady, self.seen_first = self.t0, 0
        return {"train_loss": total / n, "train_seconds": t_end - self.t0, "img_per_s": self.rate(t_end),
                "loss_sum": total}


def _agreed_stop(t: Training, should_stop: Callable[[], bool]) -> bool:
    stop = should_stop()
    if t.world_size > 1:  # every process stops at the same step
        stop = float(all_reduce_sum(torch.tensor(float(stop), device=t.device))) > 0
    return stop


def train_one_epoch(t: Training, loader, epoch: int, *, start: Optional[EpochStart] = None, max_batches: int = 0,
                    log_interval: int = 20, progress: bool = False,
                    on_log: Optional[Callable[[int, float, float], None]] = None,
                    should_stop: Optional[Callable[[], bool]] = None, loader_errors: tuple = ()) -> Dict[str, Any]:
    """One pass over ``loader`` with :func:`train_step`; returns ``train_loss`` (mean over processes),
    ``img_per_s``, ``train_seconds``, ``num_updates``, ``stopped_at``, ``loss_sum`` and ``error``.

    ``start``: resuming inside the epoch (:class:`EpochStart`). ``should_stop()`` is asked after each
    optimizer update (under DDP at the loss syncs, agreed by all processes); when it says yes the pass ends
    there and the result has ``stopped_at`` (steps done) and ``loss_sum`` for a checkpoint that continues
    exactly. An exception of ``loader_errors`` raised by the loader (an unreadable sample) ends the pass the
    same way, with the exception as ``error``, when it comes between two optimizer updates (inside an
    accumulation group it propagates: no consistent position exists there).

    ``img_per_s`` counts the steps after the first one of the pass (which carries the loader start-up and,
    in the first epoch, compilation), so it compares with ``benchmark.py``'s timed steps. The loss is read
    every ``log_interval`` steps and at the end (``on_log(step, loss, lr)``), where NaN/inf raises
    :class:`NonFiniteLossError` before anything else is saved.
    """
    start = start or EpochStart()
    t.model.train()
    n = len(loader) if not max_batches else min(len(loader), max_batches)
    if n == 0:
        raise ValueError("the train loader yields no batch: the dataset per process is smaller than batch_size")
    accum, last_group_start = t.accum_steps, (n // t.accum_steps) * t.accum_steps
    bar = tqdm(total=n, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False, unit="batch") if progress else None
    meter = _EpochMeter(t, start.loss_sum)
    t.optimizer.zero_grad(set_to_none=True)
    if bar is not None and start.step:
        bar.update(start.step)
    batches = iter(loader)
    if start.rng_state is not None:
        restore_rng_state(start.rng_state)
    stopped_at, error = None, None
    for i in itertools.count(start.step):
        try:
            x, y = next(batches)
        except StopIteration:
            break
        except loader_errors as err:
            if i % accum:
                raise
            stopped_at, error = i, err
            break
        if i >= n:
            break
        x, y = _to_device(x, t.device, t.channels_last), y.to(t.device, non_blocking=True)
        if t.mixup_fn is not None:
            x, y = t.mixup_fn(x, y)
        update = (i + 1) % accum == 0 or i + 1 == n
        loss = train_step(t, x, y, accum if i < last_group_start else n - last_group_start, update)
        meter.add(loss, x.shape[0], first=i == start.step and n > start.step + 1)
        log_now = (i + 1) % log_interval == 0 or i + 1 == n
        stop = (should_stop is not None and update and i + 1 < n and (t.world_size == 1 or log_now)
                and _agreed_stop(t, should_stop))
        if log_now or stop:
            value = meter.window_mean()
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {i + 1}/{n}")
            lr = current_lr(t.optimizer)
            if bar is not None:
                rate = meter.rate(time.perf_counter()) if meter.t_steady else 0.0
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
            if on_log is not None:
                on_log(epoch * n + i + 1, value, lr)
        if bar is not None:
            bar.update(1)
        if stop:
            stopped_at = i + 1
            break
    if bar is not None:
        bar.close()
    return {**meter.result(n), "num_updates": t.num_updates, "stopped_at": stopped_at, "error": error}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, autocast: Callable = contextlib.nullcontext,
             channels_last: bool = False, max_batches: int = 0, progress: bool = False,
             desc: str = "eval") -> Dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 (%) over every sample of every process (no padding)."""
    model.eval()
    stats = torch.zeros(4, device=device, dtype=torch.float64)  # loss_sum, correct1, correct5, count
    ce = nn.CrossEntropyLoss(reduction="sum")
    n = len(loader) if not max_batches else min(len(loader), max_batches)
    bar = tqdm(total=n, desc=desc, dynamic_ncols=True, leave=False, unit="batch") if progress else None
    for i, (x, y) in enumerate(loader):
        if i >= n:
            break
        x = _to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        _reset_net(model)
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        stats += torch.stack([ce(out, y).double(), hit[:, :1].any(1).sum().double(),
                              hit.any(1).sum().double(), torch.tensor(float(y.shape[0]), device=device,
                                                                       dtype=torch.float64)])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    stats = all_reduce_sum(stats)
    count = max(float(stats[3]), 1.0)
    return {"loss": float(stats[0]) / count, "top1": 100.0 * float(stats[1]) / count,
            "top5": 100.0 * float(stats[2]) / count, "count": int(stats[3])}
