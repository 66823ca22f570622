#!/usr/bin/env python3
"""Train any registered spiking model on any supported dataset from one YAML config.

    python train.py -c demo/digits.yaml                      # the bundled demo (CPU, minutes)
    python train.py -c cifar10-100/cifar100.yaml --model max_resnet18 --batch-size 128
    torchrun --nproc_per_node 8 train.py -c imagenet/10_768_t4.yaml
    python train.py -c cifar10-100/cifar10.yaml --resume auto  # continue output/cifar10

Every config key is also a flag (``--key value``); ``python train.py -h`` lists them. A run writes
``<output>/<experiment>/``: args.yaml, summary.csv, learning_curve.png, tensorboard/, last.pth.tar,
best.pth.tar.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import torch

from utils.config import ConfigError, Config, dump_yaml, parse_config

_log = None


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "timm", "spikingjelly", "torchvision", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def _git_commit() -> str:
    import subprocess

    try:
        root = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    """The configured model (``models.create_model``) with config-level errors."""
    from models import ModelError, create_model

    kwargs = dict(cfg.model_kwargs or {})
    for k in ("T", "num_classes"):
        if k in kwargs:
            raise ConfigError(f"model_kwargs sets '{k}'; use the top-level config key '{k}' instead")
    try:
        return create_model(cfg.model, num_classes=num_classes, T=cfg.T, **kwargs)
    except ModelError as err:
        raise ConfigError(str(err).replace("rejected kwargs", "rejected model_kwargs")) from None


def _make_loaders(cfg: Config, train_set, eval_set, dist_info):
    from torch.utils.data import DataLoader

    from utils.distributed import ShardSampler
    from utils.engine import SampleSeededDataset, SeededDistributedSampler, seed_worker

    pin = bool(cfg.pin_memory) and dist_info.device.type == "cuda"
    per_rank = len(train_set) // dist_info.world_size
    if per_rank < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {per_rank} training samples per process; "
                          f"lower --batch-size")
    workers = cfg.workers
    # Worker processes stay alive across epochs; each training sample seeds its worker's RNGs from
    # (seed, epoch, index), so augmentations do not depend on worker state and a resumed run replays exactly.
    seeded = workers > 0
    train_sampler = SeededDistributedSampler(train_set, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                             shuffle=True, seed=cfg.seed, drop_last=False, with_seeds=seeded)
    loader_kw = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0, worker_init_fn=seed_worker)
    train_loader = DataLoader(SampleSeededDataset(train_set) if seeded else train_set, batch_size=cfg.batch_size,
                              sampler=train_sampler, drop_last=True, **loader_kw)
    eval_loader = DataLoader(eval_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                             sampler=ShardSampler(len(eval_set), dist_info.rank, dist_info.world_size),
                             drop_last=False, **loader_kw)
    return train_loader, eval_loader, train_sampler


def _describe_fastpath(fp) -> str:
    if fp is None:
        return "off: plain eager path (spikingjelly neurons, no compile)"
    compiled = {False: "no compile", "model": "whole model compiled (backward not bitwise-faithful)",
                "blocks": "blocks compiled", "neurons": "neurons compiled"}[fp.compile]
    extras = [name for name in ("channels_last", "grad_checkpointing", "compact_spikes") if getattr(fp, name)]
    return f"{fp.neuron_impl} neurons, {compiled}" + "".join(f", {e}" for e in extras)


def _training_state(model, optimizer, sched, scaler, ema, cfg, epoch, num_updates, best, dist_info) -> Dict[str, Any]:
    from utils.checkpoint import capture_rng_state

    unwrapped = getattr(model, "module", model)
    unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)
    state = {
        "version": 1, "arch": cfg.model, "epoch": epoch, "num_updates": num_updates,
        "state_dict": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best_metric": best["metric"], "best_epoch": best["epoch"], "metric": best["last"],
        "rng": capture_rng_state(), "world_size": dist_info.world_size,
        "config": _plain(cfg.to_dict()),
    }
    if ema is not None:
        state["state_dict_ema"] = ema.module.state_dict()
    return state


def _plain(d):
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if d is None or isinstance(d, (bool, int, float, str)):
        return d
    return str(d)


def run(cfg: Config) -> Dict[str, Any]:
    """Train according to ``cfg``; returns ``{'best_top1', 'best_epoch', 'run_dir'}``."""
    global _log
    import models
    from timm.utils import ModelEmaV3

    from utils import data as data_lib
    from utils.checkpoint import (auto_resume_path, copy_checkpoint, load_checkpoint,
                                  read_training_state, restore_rng_state, save_checkpoint)
    from utils.distributed import barrier, init_distributed
    from utils.engine import (amp_context, build_optimizer, build_scheduler, build_train_loss, epoch_seed,
                              evaluate, make_scaler, prepare_model, resolve_lr, seed_everything, set_epoch_lr,
                              train_fastpath_config, train_one_epoch, current_lr)
    from utils.logger import RunLogger, setup_console_logging

    try:
        dist_info = init_distributed(cfg.device, cfg.dist_backend)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    main = dist_info.is_main
    _log = setup_console_logging(main)
    device = dist_info.device
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and dist_info.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_info.world_size))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also NaN-fills every new tensor (a debugging aid for reads of uninitialised
        # memory, ~3 % of a training step on CPU); the results do not depend on it
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
    try:
        autocast = amp_context(cfg.amp, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    scaler = make_scaler(cfg.amp, device)

    run_dir = os.path.join(cfg.output, cfg.experiment)
    # ---- data
    train_set, eval_set = data_lib.create_datasets(cfg)
    info = data_lib.dataset_info(cfg.dataset)
    num_classes = cfg.num_classes or info["num_classes"]
    train_loader, eval_loader, train_sampler = _make_loaders(cfg, train_set, eval_set, dist_info)

    # ---- model (same init on every rank)
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes)
    if cfg.initial_checkpoint:
        load_checkpoint(model, cfg.initial_checkpoint, strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    fastpath = None  # utils.fastpath.FastPathConfig, applied below (after the EMA copy and the resume)
    if cfg.fastpath:
        fastpath, compiler_warning = train_fastpath_config(cfg.amp, device, cfg.channels_last, cfg.grad_checkpointing,
                                                           compile_model=cfg.compile, compact_spikes=cfg.compact_spikes)
        if compiler_warning and main:
            _log.warning(compiler_warning)
    elif cfg.compile:
        raise ConfigError("compile: true needs fastpath: true (spikingjelly's neuron operator is opaque to "
                          "torch.compile); drop compile or set fastpath: true")
    elif cfg.compact_spikes:
        raise ConfigError("compact_spikes: true needs fastpath: true (it is part of utils.fastpath); "
                          "drop compact_spikes or set fastpath: true")
    channels_last = fastpath.channels_last if fastpath else cfg.channels_last
    try:  # under the fast path, utils.fastpath applies channels-last (checkpointing is applied once, here)
        model = prepare_model(model, device, cfg.channels_last and not fastpath, cfg.grad_checkpointing,
                              cfg.sync_bn and dist_info.distributed)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    effective_batch = cfg.batch_size * cfg.accum_steps * dist_info.world_size
    lr = resolve_lr(cfg, effective_batch)
    try:
        optimizer = build_optimizer(model, cfg, lr)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer '{cfg.opt}': {err}") from None
    updates_per_epoch = -(-(min(len(train_loader), cfg.max_train_batches or len(train_loader))) // cfg.accum_steps)
    try:
        sched, total_epochs = build_scheduler(optimizer, cfg, updates_per_epoch)
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"scheduler '{cfg.sched}': {err}") from None
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None

    # ---- resume
    start_epoch, num_updates = 0, 0
    best = {"metric": None, "epoch": -1, "last": None}
    resume = cfg.resume
    if resume == "auto":
        resume = auto_resume_path(run_dir)
        if resume is None and main:
            _log.info(f"--resume auto: no checkpoint in {run_dir}, starting from scratch")
    if resume:
        state = read_training_state(resume)
        load_checkpoint(model, state, strict=True, key="state_dict")
        optimizer.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if "state_dict_ema" in state:
                load_checkpoint(ema.module, state, strict=True, key="state_dict_ema")
            else:
                ema.set(model)
        start_epoch = int(state["epoch"]) + 1
        num_updates = int(state.get("num_updates", 0))
        best = {"metric": state.get("best_metric"), "epoch": int(state.get("best_epoch", -1)),
                "last": state.get("metric")}
        restore_rng_state(state["rng"])
        if main:
            _log.info(f"resumed from {resume} (epoch {state['epoch']} done; continuing at epoch {start_epoch})")
            saved = state.get("config", {})
            changed = [k for k, v in _plain(cfg.to_dict()).items()
                       if k not in ("resume", "epochs", "config") and k in saved and saved[k] != v]
            if changed:
                _log.warning(f"warning: these keys differ from the checkpoint's run: {', '.join(changed)}")
            if state.get("world_size", dist_info.world_size) != dist_info.world_size:
                _log.warning(f"warning: checkpoint was written with world size {state['world_size']}, "
                             f"now {dist_info.world_size}; the effective batch changed")

    # ---- fast path (in place: same parameters, so the optimizer is unaffected), then wrap
    if fastpath is not None:
        import utils.fastpath

        try:
            utils.fastpath.prepare_model(model, "train", fastpath)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model = getattr(model, "module", model)

    mixup_fn = data_lib.create_mixup(cfg, num_classes)
    loss_fn = build_train_loss(cfg, mixup_fn is not None).to(device)

    # ---- banner and args.yaml
    neuron_impl = models.describe_neurons(eval_model, device)
    applied = eval_model.fastpath_config if fastpath is not None else None  # what utils.fastpath applied
    run_info = {
        "versions": _versions(), "git_commit": _git_commit(), "device": str(device),
        "world_size": dist_info.world_size, "effective_batch": effective_batch, "lr": lr,
        "num_classes": num_classes, "params": n_params, "T": getattr(eval_model, "T", cfg.T),
        "neuron_implementation": neuron_impl,
        "fastpath": dataclasses.asdict(applied) if applied is not None else "off (plain eager path)",
        "total_epochs": total_epochs,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    if main:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "args.yaml"), "w") as f:
            f.write(dump_yaml({**_plain(cfg.to_dict()), "run_info": _plain(run_info)}))
        v = run_info["versions"]
        sched_desc = (f"{cfg.sched}: {cfg.epochs} epochs (warmup {cfg.warmup_epochs}) + cooldown {cfg.cooldown_epochs}"
                      f" = {total_epochs}, per {'update' if cfg.sched_on_updates else 'epoch'}")
        lr_desc = (f"lr {lr:.4g} = blr {cfg.blr:g} x effective batch {effective_batch} / 256" if cfg.blr
                   else f"lr {lr:.4g}")
        _log.info("\n".join([
            f"== {cfg.experiment}: {cfg.model} on {info['name']} ==",
            f"model       {cfg.model} {cfg.model_kwargs or ''}  params {n_params / 1e6:.3f} M  T {run_info['T']}"
            f"  classes {num_classes}",
            f"data        {len(train_set)} train / {len(eval_set)} eval samples"
            f"{'  mixup/cutmix on' if mixup_fn is not None else ''}",
            f"batch       {cfg.batch_size} x accum {cfg.accum_steps} x {dist_info.world_size} process(es) "
            f"= effective {effective_batch}",
            f"optimizer   {cfg.opt}, {lr_desc}, weight decay {cfg.weight_decay:g}; {sched_desc}",
            f"device      {device}  amp {cfg.amp}  channels_last {channels_last}  ema {cfg.model_ema}",
            f"fast path   {_describe_fastpath(applied)}",
            f"neurons     {neuron_impl}",
            f"versions    torch {v['torch']}  timm {v['timm']}  spikingjelly {v['spikingjelly']}  cuda {v['cuda']}",
            f"run folder  {os.path.abspath(run_dir)}",
        ]))
        if cfg.reference_batch and cfg.reference_batch != effective_batch:
            _log.warning(f"note: the published recipe used an effective batch of {cfg.reference_batch}; "
                         f"yours is {effective_batch}. Accuracy may differ (use --accum-steps to match).")
    logger = RunLogger(run_dir, cfg.to_dict(), ema=ema is not None, start_epoch=start_epoch) if main else None

    last_path = os.path.join(run_dir, "last.pth.tar")
    best_path = os.path.join(run_dir, "best.pth.tar")
    metric_key = "ema_eval_top1" if cfg.eval_metric == "ema_top1" and ema is not None else "eval_top1"
    progress = cfg.progress and main
    on_log = logger.log_step if logger is not None else None
    try:
        for epoch in range(start_epoch, total_epochs):
            t_epoch = time.perf_counter()
            es = epoch_seed(cfg.seed, epoch, dist_info.rank)
            seed_everything(es)
            train_sampler.set_epoch(epoch)
            if mixup_fn is not None and hasattr(mixup_fn, "mixup_enabled"):
                mixup_fn.mixup_enabled = not (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch)
            set_epoch_lr(sched, epoch, updates_per_epoch, cfg.sched_on_updates)
            lr_epoch = current_lr(optimizer)
            stats = train_one_epoch(
                model, train_loader, optimizer, loss_fn, device=device, epoch=epoch, autocast=autocast,
                scaler=scaler, mixup_fn=mixup_fn, ema=ema, sched=sched, sched_on_updates=cfg.sched_on_updates,
                num_updates=num_updates, accum_steps=cfg.accum_steps, clip_grad=cfg.clip_grad,
                clip_mode=cfg.clip_mode, channels_last=channels_last, log_interval=cfg.log_interval,
                max_batches=cfg.max_train_batches, world_size=dist_info.world_size, progress=progress,
                on_log=on_log)
            num_updates = stats["num_updates"]
            ev = evaluate(eval_model, eval_loader, device=device, autocast=autocast,
                          channels_last=channels_last, max_batches=cfg.max_eval_batches)
            row = {"epoch": epoch, "lr": lr_epoch, "train_loss": stats["train_loss"], "eval_loss": ev["loss"],
                   "eval_top1": ev["top1"], "eval_top5": ev["top5"], "img_per_s": stats["img_per_s"]}
            if ema is not None:
                ev_ema = evaluate(ema.module, eval_loader, device=device, autocast=autocast,
                                  channels_last=channels_last, max_batches=cfg.max_eval_batches)
                row.update(ema_eval_loss=ev_ema["loss"], ema_eval_top1=ev_ema["top1"], ema_eval_top5=ev_ema["top5"])
            metric = row[metric_key]
            improved = best["metric"] is None or metric > best["metric"]
            if improved:
                best["metric"], best["epoch"] = metric, epoch
            best["last"] = metric
            row["epoch_seconds"] = time.perf_counter() - t_epoch
            if main:
                logger.log_epoch(row)  # the row first: a kill before the checkpoint re-runs (and re-logs) the epoch
                save_checkpoint(_training_state(model, optimizer, sched, scaler, ema, cfg, epoch, num_updates,
                                                best, dist_info), last_path)
                if improved:
                    copy_checkpoint(last_path, best_path)
                ema_txt = f"  ema_top1 {row['ema_eval_top1']:.2f}" if ema is not None else ""
                _log.info(f"epoch {epoch:>3}/{total_epochs - 1}  lr {lr_epoch:.3g}  train_loss {stats['train_loss']:.4f}"
                          f"  eval_loss {ev['loss']:.4f}  top1 {ev['top1']:.2f}  top5 {ev['top5']:.2f}{ema_txt}"
                          f"  best {best['metric']:.2f} (ep {best['epoch']})  {stats['img_per_s']:.0f} img/s"
                          f"  {row['epoch_seconds']:.1f}s")
            barrier()
    finally:
        if logger is not None:
            logger.close()
    if main:
        best_txt = f"{best['metric']:.2f}% at epoch {best['epoch']}" if best["metric"] is not None else "n/a"
        _log.info(f"done. best {metric_key.replace('eval_', '')} {best_txt}\n"
                  f"outputs in {os.path.abspath(run_dir)}: summary.csv, learning_curve.png, tensorboard/, "
                  f"last.pth.tar, best.pth.tar, args.yaml")
    return {"best_top1": best["metric"], "best_epoch": best["epoch"], "run_dir": run_dir}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.config import input_errors, report_input_error
    from utils.distributed import cleanup, is_main
    from utils.engine import NonFiniteLossError

    cfg = None
    try:
        cfg = parse_config(argv, description=__doc__.split("\n\n")[0])
        run(cfg)
        return 0
    except input_errors() as err:
        return report_input_error(err)
    except NonFiniteLossError as err:
        if is_main():
            last = os.path.join(cfg.output, cfg.experiment, "last.pth.tar")
            kept = f"The last good checkpoint is kept: {last}." if os.path.isfile(last) else "No checkpoint was written yet."
            print(f"error: training diverged: {err}. {kept} Try a lower --lr, --clip-grad 1.0 or --amp none; "
                  f"continue from the checkpoint with --resume auto.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_main() and cfg is not None:
            print(f"\ninterrupted. Continue with: python train.py -c {cfg.config or '<config>'} "
                  f"--experiment {cfg.experiment} --output {cfg.output} --resume auto", file=sys.stderr)
        return 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
