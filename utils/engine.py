"""Training engine shared by every dataset: optimizer/schedule/loss factories, one train epoch, eval.

Engine switches (``amp``, ``channels_last``, ``compile``, ``grad_checkpointing``) are applied in
:func:`prepare_model` and :func:`amp_context`, nowhere else. Every forward pass is followed by
``models.reset_net`` so no membrane state leaks between batches.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from utils.distributed import all_reduce_sum

__all__ = ["NonFiniteLossError", "seed_everything", "epoch_seed", "seed_worker", "amp_context", "make_scaler",
           "prepare_model", "build_optimizer", "build_scheduler", "set_epoch_lr", "build_train_loss",
           "train_one_epoch", "evaluate", "current_lr", "resolve_lr"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


def _reset_net(model: nn.Module) -> None:
    import models

    models.reset_net(model)


# ----------------------------------------------------------------------------------------------
# seeding
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
    """DataLoader ``worker_init_fn``: numpy/python RNGs follow the torch seed of the worker."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


# ----------------------------------------------------------------------------------------------
# mixed precision
def amp_context(mode: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``amp`` = none | bf16 | fp16."""
    if mode == "none":
        return contextlib.nullcontext
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp none")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(mode: str, device: torch.device):
    """A GradScaler for fp16 on CUDA, else None (bf16 needs no loss scaling)."""
    if mode == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# ----------------------------------------------------------------------------------------------
# model / optimizer / schedule / loss
def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = False,
                  grad_checkpointing: bool = False, sync_bn: bool = False) -> nn.Module:
    """Move to device and apply the memory-format, checkpointing and SyncBN switches."""
    if grad_checkpointing:
        fn = getattr(model, "set_grad_checkpointing", None)
        if fn is not None:
            fn(True)
        else:  # per-block recomputation that handles neuron state and BN statistics
            from utils.fastpath import enable_grad_checkpointing
            if enable_grad_checkpointing(model) == 0:
                raise ValueError(f"{type(model).__name__} has no blocks to checkpoint "
                                 "(no set_grad_checkpointing method either); set grad_checkpointing: false")
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def resolve_lr(cfg, effective_batch: int) -> float:
    """``blr * effective_batch / 256`` when ``blr`` is set (ImageNet recipe), else ``lr``."""
    if cfg.get("blr"):
        return cfg.blr * effective_batch / 256
    return cfg.lr


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """timm optimizer; weight decay 0 for 1-D parameters (BN, biases) and ``no_weight_decay()`` names."""
    from timm.optim import create_optimizer_v2

    kw: Dict[str, Any] = {}
    if cfg.get("opt_eps") is not None:
        kw["eps"] = cfg.opt_eps
    if cfg.get("opt_betas"):
        kw["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=True, **kw)


def build_scheduler(optimizer, cfg, updates_per_epoch: int):
    """timm scheduler and the total number of epochs (``epochs + cooldown_epochs``).

    ``epochs`` always counts warmup; with ``warmup_prefix`` the cosine runs over ``epochs - warmup``
    from the end of warmup (MAE/ImageNet recipe), otherwise over ``epochs`` from epoch 0 with the
    published small jump at the end of warmup (timm 0.6 CIFAR/event recipe).
    """
    from timm.scheduler import create_scheduler_v2

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


def current_lr(optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


def build_train_loss(cfg, mixup_active: bool) -> nn.Module:
    """Soft-target CE with mixup/cutmix (targets carry the smoothing), else (smoothed) CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.get("smoothing", 0.0):
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


# ----------------------------------------------------------------------------------------------
def _to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    epoch: int,
    autocast: Callable = contextlib.nullcontext,
    scaler=None,
    mixup_fn: Optional[Callable] = None,
    ema=None,
    sched=None,
    sched_on_updates: bool = False,
    num_updates: int = 0,
    accum_steps: int = 1,
    clip_grad: Optional[float] = None,
    clip_mode: str = "norm",
    channels_last: bool = False,
    log_interval: int = 20,
    max_batches: int = 0,
    world_size: int = 1,
    progress: bool = False,
    on_log: Optional[Callable[[int, float, float], None]] = None,
) -> Dict[str, float]:
    """One pass over ``loader``; returns ``train_loss`` (mean over processes), ``img_per_s``, ``num_updates``.

    Checks the loss for NaN/inf every ``log_interval`` steps and at the end (one host sync each), and
    raises :class:`NonFiniteLossError` before anything else is saved.
    """
    from timm.utils import dispatch_clip_grad

    model.train()
    n = len(loader) if not max_batches else min(len(loader), max_batches)
    if n == 0:
        raise ValueError("the train loader yields no batch: the dataset per process is smaller than batch_size")
    last_group_start = (n // accum_steps) * accum_steps
    unwrapped = getattr(model, "module", model)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    params = [p for p in model.parameters() if p.requires_grad]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False, unit="batch")

    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    window = torch.zeros((), device=device, dtype=torch.float64)
    window_steps = 0
    seen = 0
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        if i >= n:
            break
        x = _to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        group = accum_steps if i < last_group_start else n - last_group_start
        update_now = (i + 1) % accum_steps == 0 or i + 1 == n
        sync_ctx = model.no_sync() if ddp and not update_now else contextlib.nullcontext()
        with sync_ctx:
            with autocast():
                out = model(x)
                loss = loss_fn(out, y)
            scaled = loss / group
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        _reset_net(model)
        if update_now:
            if clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if ema is not None:
                ema.update(unwrapped, step=num_updates)
            if sched is not None and sched_on_updates:
                sched.step_update(num_updates)
        d = loss.detach().to(torch.float64)
        loss_sum += d
        window += d
        window_steps += 1
        seen += x.shape[0]
        if (i + 1) % log_interval == 0 or i + 1 == n:
            w = all_reduce_sum(window) / world_size  # one host sync per log interval
            value = float(w) / window_steps
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {i + 1}/{n}")
            lr = current_lr(optimizer)
            rate = seen * world_size / max(time.perf_counter() - t0, 1e-9)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
            if on_log is not None:
                on_log(epoch * n + i + 1, value, lr)
            window.zero_()
            window_steps = 0
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    total = float(all_reduce_sum(loss_sum)) / world_size
    return {"train_loss": total / n, "img_per_s": seen * world_size / max(seconds, 1e-9),
            "num_updates": num_updates, "train_seconds": seconds}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, autocast: Callable = contextlib.nullcontext,
             channels_last: bool = False, max_batches: int = 0, progress: bool = False,
             desc: str = "eval") -> Dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 (%) over every sample of every process (no padding)."""
    model.eval()
    stats = torch.zeros(4, device=device, dtype=torch.float64)  # loss_sum, correct1, correct5, count
    ce = nn.CrossEntropyLoss(reduction="sum")
    n = len(loader) if not max_batches else min(len(loader), max_batches)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, dynamic_ncols=True, leave=False, unit="batch")
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
