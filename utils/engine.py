"""Training engine shared by every dataset: optimizer/schedule/loss factories, one train epoch, eval.

Engine switches (``amp``, ``channels_last``, ``compile``, ``grad_checkpointing``, ``fastpath``) are
resolved in :func:`train_fastpath_config` and applied in :func:`prepare_model`,
``utils.fastpath.prepare_model`` and :func:`amp_context`, nowhere else. Every forward pass is followed
by ``models.reset_net`` so no membrane state leaks between batches.
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

__all__ = ["NonFiniteLossError", "seed_everything", "epoch_seed", "seed_worker", "SeededDistributedSampler",
           "SampleSeededDataset", "amp_context", "make_scaler",
           "prepare_model", "train_fastpath_config", "cpp_compiler", "build_optimizer", "build_scheduler", "set_epoch_lr", "build_train_loss",
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


class SeededDistributedSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that can also hand each index a seed drawn from (seed, epoch, index).

    With ``with_seeds`` it yields ``(index, sample_seed)`` for :class:`SampleSeededDataset`: random
    augmentations then depend only on the run seed, the epoch and the sample, not on which worker
    process loads it or what that worker did before (persistent workers, exact resume).
    """

    def __init__(self, *args, with_seeds: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.with_seeds = with_seeds

    def __iter__(self):
        indices = super().__iter__()
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


def cpp_compiler() -> Optional[str]:
    """The C++ compiler torch inductor would use on CPU (``torch._inductor.config.cpp.cxx``), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an inductor without this helper: fall back to PATH
        import shutil

        return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def train_fastpath_config(amp: str, device: torch.device, channels_last: bool = False,
                          grad_checkpointing: bool = False, compile_model: bool = False,
                          compact_spikes: bool = False):
    """``utils.fastpath.default_config('train', amp)`` (what ``benchmark.py`` runs) with train.py's switches.

    ``channels_last``/``grad_checkpointing``/``compact_spikes`` turn those on; ``compile_model`` compiles the whole model
    (faster, but backward is not bitwise-faithful: near-threshold spikes may flip). Returns
    ``(config, warning)``: on CPU without a C++ compiler, compilation is off (torch neurons run
    uncompiled) and ``warning`` says so; otherwise ``warning`` is None.
    """
    import dataclasses

    from utils.fastpath import default_config

    fp = default_config("train", amp)
    over: Dict[str, Any] = {"channels_last": fp.channels_last or channels_last,
                            "grad_checkpointing": fp.grad_checkpointing or grad_checkpointing,
                            "compact_spikes": fp.compact_spikes or compact_spikes}
    if compile_model:
        over["compile"] = "model"
    warning = None
    if device.type == "cpu" and (over.get("compile") or fp.compile) and cpp_compiler() is None:
        over["compile"] = False
        warning = ("warning: no C++ compiler found (torch.compile on CPU needs g++ or clang++, see "
                   "torch._inductor.config.cpp.cxx); the fast path runs its PyTorch neurons without compilation, "
                   "which is slower. Install one (e.g. apt install g++) or set fastpath: false.")
    return dataclasses.replace(fp, **over), warning


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
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


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

    ``img_per_s`` counts the training steps after the first one of the epoch (which carries the loader
    start-up and, in the first epoch, compilation), so it compares with ``benchmark.py``'s timed steps;
    ``train_seconds`` is the whole pass. The loss is accumulated on the device and read (one host sync)
    every ``log_interval`` steps and at the end, where NaN/inf raises :class:`NonFiniteLossError`
    before anything else is saved.
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

    t_steady, seen_first = 0.0, 0
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
        if i == 0 and n > 1:  # steady-state rate: from the end of the first step (synchronised) on
            _sync(device)
            t_steady, seen_first = time.perf_counter(), seen
        if (i + 1) % log_interval == 0 or i + 1 == n:
            w = all_reduce_sum(window) / world_size  # one host sync per log interval
            value = float(w) / window_steps
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {i + 1}/{n}")
            lr = current_lr(optimizer)
            rate = (seen - seen_first) * world_size / max(time.perf_counter() - t_steady, 1e-9) if i else 0.0
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
    total = float(all_reduce_sum(loss_sum)) / world_size  # syncs the device: the timings below are complete
    t_end = time.perf_counter()
    if n == 1:
        t_steady, seen_first = t0, 0
    return {"train_loss": total / n, "num_updates": num_updates, "train_seconds": t_end - t0,
            "img_per_s": (seen - seen_first) * world_size / max(t_end - t_steady, 1e-9)}


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
