"""Setting up a training run: datasets and loaders, the run folder's lock and resume state, the model and
training objects, the banner and ``args.yaml``."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader

import models
from utils import data as data_lib
from utils.config import Config, ConfigError, dump_yaml
from utils.data.fingerprint import dataset_fingerprint, describe_data_change
from utils.io.atomic import FileWriteError, atomic_write
from utils.training.checkpoint import (auto_resume_path, checkpoint_position, copy_checkpoint, load_checkpoint,
                                       read_training_state, restore_rng_state)
from utils.training.determinism import apply_determinism, resolve_deterministic
from utils.training.distributed import ShardSampler, broadcast_object, elastic_restart, init_distributed, is_main
from utils.training.engine import build_model, build_training
from utils.training.epochs import Run, plain, position, rank0_writes
from utils.training.logger import RunLogger, setup_console_logging
from utils.training.memory_plan import device_memory_warning
from utils.training.preflight import batch_problem, refuse_failed, run_folder_problem, start_checks
from utils.training.run_folder import is_running, read_status
from utils.training.seeding import SampleSeededDataset, SeededDistributedSampler, seed_everything, seed_worker
from utils.training.threads import ThreadPolicy, loader_workers

__all__ = ["setup_process", "load_datasets", "make_loaders", "claim_run_folder", "setup_run", "complete_files"]

_log = logging.getLogger("train")


def setup_process(cfg: Config):
    """Distributed init, console logging, threads and determinism; returns the DistInfo (with ``.threads``)."""

    try:
        dist_info = init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    setup_console_logging(dist_info.is_main)
    refuse_failed(start_checks(cfg, dist_info.device))  # before anything is written
    dist_info.threads = ThreadPolicy.start(cfg.threads, dist_info.world_size)
    if cfg.workers is None:  # auto: the CPU cores of this process's share of the machine
        cfg.workers = loader_workers(dist_info.device.type, int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                              dist_info.world_size)))
    cfg.deterministic = resolve_deterministic(cfg.deterministic, dist_info.device)
    apply_determinism(cfg.deterministic)
    return dist_info


def load_datasets(cfg: Config, world_size: int):
    """``(train_set, eval_set)``, built before the run folder is touched: a missing or wrongly laid-out dataset
    folder, and a batch larger than a process's share of the training set (an epoch of zero steps), stop the
    run before ``run.lock`` or ``status.json`` is written."""
    train_set, eval_set = data_lib.create_datasets(cfg)
    problem = batch_problem(cfg, len(train_set), world_size)
    if problem:
        raise ConfigError(problem)
    return train_set, eval_set


def make_loaders(cfg: Config, train_set, eval_set, dist_info):
    pin = bool(cfg.pin_memory) and dist_info.device.type == "cuda"
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


def claim_run_folder(cfg: Config, folder, command: str) -> Optional[Dict[str, Any]]:
    """Lock the run folder and read what to resume (a training state, or None to start at epoch 0).

    A fresh start over a folder that holds a run stops unless ``--overwrite``; every process gets rank 0's
    answer. Workers torchrun restarted continue the run their launch started (``status.json`` names the
    launch) from its last checkpoint, whatever ``--resume``/``--overwrite`` said.
    """
    error, resume, launch = None, cfg.resume, elastic_restart()
    if folder is not None:
        try:
            if launch is None and not is_running(folder.path) and (problem := run_folder_problem(cfg)):
                raise ConfigError(problem)  # before run.lock is written; a running run's lock names its holder
            folder.lock(command)
            if launch is not None and (read_status(folder.path) or {}).get("launch") == launch:
                last = auto_resume_path(folder.path)  # none yet: what this launch wrote before it goes
                _log.info(f"torchrun restarted the workers: continuing from {last or resume or 'the start'}")
                resume, cfg.overwrite = (last, False) if last else (resume, True)
            if resume == "auto":
                resume = auto_resume_path(folder.path)
                if resume is None:
                    _log.info(f"--resume auto: no checkpoint in {folder.path}, starting from scratch")
            elif not resume:
                folder.check_fresh_start(cfg.overwrite)
            else:  # a checkpoint named by the user: refused if this folder holds later epochs
                folder.check_resume(resume, cfg.overwrite)
        except ConfigError as err:
            error = str(err)
    error, resume, cfg.overwrite = broadcast_object((error, resume, cfg.overwrite))
    if error:
        raise ConfigError(error)
    if not resume:
        return None
    state = read_training_state(resume)
    state["path"] = resume
    run_dir = os.path.abspath(os.path.join(cfg.output, cfg.experiment))
    state["other_folder"] = os.path.dirname(os.path.abspath(resume)) != run_dir  # continues a run from elsewhere
    return state


def setup_run(cfg, dist_info, run_dir, state, stop, folder, datasets) -> Run:
    """Loaders, model and training objects, the resume position, and rank 0's banner, args.yaml and logger
    (summary.csv rows restored from the checkpoint, best.pth.tar re-derived)."""
    main, device = dist_info.is_main, dist_info.device
    if main and (memory_warning := device_memory_warning(cfg, device)):  # CUDA only: planned step vs the device
        _log.warning(memory_warning)
    train_set, eval_set = datasets
    info = data_lib.dataset_info(cfg.dataset)
    num_classes = cfg.num_classes or info["num_classes"]
    train_loader, eval_loader, train_sampler = make_loaders(cfg, train_set, eval_set, dist_info)
    seed_everything(cfg.seed)  # same init on every rank
    model = build_model(cfg, num_classes)
    if cfg.initial_checkpoint:
        load_checkpoint(model, cfg.initial_checkpoint, strict=True)
    t = build_training(cfg, model, device, dist_info.world_size, len(train_loader),
                       data_lib.create_mixup(cfg, num_classes), state)
    for warning in t.warnings if main else ():
        _log.warning(warning)

    # ---- resume position
    start_epoch, best, partial = position(state)  # the update count is restored into t (restore_training)
    data = {"train": dataset_fingerprint(train_set), "eval": dataset_fingerprint(eval_set)}
    if state is not None and data_changed(state, data, start_epoch, partial, best) and partial:
        partial = None  # the saved position indexes a sample order of the old data: the epoch starts again
        t.num_updates = start_epoch * t.updates_per_epoch
    if state is not None:
        if partial is None:  # inside an epoch the RNG is restored once its loader iterator exists
            restore_rng_state(state["rng"])
        if main:
            report_resume(cfg, state, start_epoch, dist_info.world_size)
    # every epoch's summary.csv row travels in the checkpoint: a resume restores rows summary.csv lacks
    history = [r for r in (state or {}).get("history", []) if int(r["epoch"]) < start_epoch]
    run = Run(cfg, dist_info, stop, folder, run_dir, t, train_loader, eval_loader, train_sampler, state,
               start_epoch, partial, best, history, data=data)
    if state is not None:
        run.held = (f"the position in epoch {start_epoch} after step {partial['step']}" if partial
                    else f"epoch {start_epoch - 1}")

    # ---- rank 0's files
    def setup_files() -> None:
        announce(cfg, t, run_dir, info, num_classes, len(train_set), len(eval_set), dist_info)
        run.logger = RunLogger(run_dir, cfg, ema=t.ema is not None, start_epoch=start_epoch,
                               history=history)
        report_reconciled(run.logger, state)
        rederive_best(state, run.best_path)

    try:
        rank0_writes(dist_info, setup_files)
    except FileWriteError as err:
        err.kept = run.kept("Nothing was trained yet.")
        raise
    return run


def complete_files(cfg: Config, state: Dict[str, Any], folder, total: int) -> None:
    """A run killed after writing its last epoch's ``last.pth.tar``: write what follows it from the checkpoint
    (``summary.csv`` rows, ``best.pth.tar``, ``learning_curve.png``) and mark ``status.json`` finished."""
    quiet = copy.copy(cfg)
    quiet.tensorboard = quiet.log_wandb = False
    logger = RunLogger(folder.path, quiet, ema=bool(cfg.model_ema), start_epoch=total, history=state.get("history", []))
    report_reconciled(logger, state)
    rederive_best(state, os.path.join(folder.path, "best.pth.tar"))
    if cfg.plot and logger.rows:
        logger.plot()
    folder.status = folder.read_state() or {}
    folder.write_status(state="finished", epoch=int(state["epoch"]), total_epochs=total,
                        best_top1=state.get("best_metric"), best_epoch=int(state.get("best_epoch", -1)),
                        exit_message="done (status completed by --resume: the run had stopped after its last "
                                     "checkpoint)")
    _log.info(f"the run had stopped after writing its last checkpoint: completed status.json, summary.csv, "
              f"best.pth.tar{' and learning_curve.png' if cfg.plot else ''} from {state['path']}")


def report_resume(cfg: Config, state: Dict[str, Any], start_epoch: int, world_size: int) -> None:
    partial = state.get("partial_epoch")
    where = f"epoch {start_epoch}, step {partial['step']}" if partial else f"epoch {start_epoch}"
    _log.info(f"resumed from {state['path']} (epoch {state['epoch']} done; continuing at {where})")
    saved, now = state.get("config", {}), plain(vars(cfg))
    changed = [f"{k} {saved[k]} -> {v}" for k, v in now.items()
               if k not in ("resume", "overwrite", "config") and k in saved and saved[k] != v]
    if changed:
        _log.warning(f"changed since the checkpoint, in effect from here on (the lr schedule is rebuilt from the "
                     f"current config at epoch {start_epoch}): {', '.join(changed)}")
    if state.get("world_size", world_size) != world_size:
        _log.warning(f"warning: checkpoint was written with world size {state['world_size']}, now {world_size}; "
                     f"the effective batch changed (and an lr set by blr), so from here the run continues but no "
                     f"longer equals an uninterrupted one (docs/training.md, 'Many nodes')")


def announce(cfg, t, run_dir, info, num_classes, n_train, n_eval, dist_info) -> None:
    """The banner on the console and ``args.yaml`` (config + what was resolved) in the run folder."""
    neuron_impl = models.describe_neurons(t.eval_model, dist_info.device)
    run_info = {
        "versions": versions(), "git_commit": git_commit(), "device": str(dist_info.device),
        "world_size": dist_info.world_size, "effective_batch": t.effective_batch, "lr": t.lr,
        "num_classes": num_classes, "params": t.n_params, "T": getattr(t.eval_model, "T", cfg.T),
        "neuron_implementation": neuron_impl,
        "fastpath": dataclasses.asdict(t.fastpath) if t.fastpath is not None else "off (plain eager path)",
        "total_epochs": t.total_epochs, "threads": dist_info.threads.describe(),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    atomic_write(os.path.join(run_dir, "args.yaml"), dump_yaml({**plain(vars(cfg)), "run_info": plain(run_info)}))
    v = run_info["versions"]
    lr_desc = (f"lr {t.lr:.4g} = blr {cfg.blr:g} x effective batch {t.effective_batch} / 256" if cfg.blr
               else f"lr {t.lr:.4g}")
    _log.info("\n".join([
        f"== {cfg.experiment}: {cfg.model} on {info['name']} ==",
        f"model       {cfg.model} {cfg.model_kwargs or ''}  params {t.n_params / 1e6:.3f} M  T {run_info['T']}"
        f"  classes {num_classes}",
        f"data        {n_train} train / {n_eval} eval samples{'  mixup/cutmix on' if t.mixup_fn is not None else ''}",
        f"batch       {cfg.batch_size} x accum {cfg.accum_steps} x {dist_info.world_size} process(es) "
        f"= effective {t.effective_batch}",
        f"optimizer   {cfg.opt}, {lr_desc}, weight decay {cfg.weight_decay:g}",
        f"schedule    {describe_schedule(cfg, t.total_epochs)}",
        f"device      {dist_info.device}  amp {cfg.amp}  channels_last {t.channels_last}  ema {cfg.model_ema}",
        f"threads     {dist_info.threads.describe()}",
        f"fast path   {describe_fastpath(t.fastpath)}",
        f"neurons     {neuron_impl}",
        f"versions    torch {v['torch']}  timm {v['timm']}  spikingjelly {v['spikingjelly']}  cuda {v['cuda']}",
        f"run folder  {os.path.abspath(run_dir)}",
    ]))
    if cfg.reference_batch and cfg.reference_batch != t.effective_batch:
        _log.warning(f"note: the published recipe used an effective batch of {cfg.reference_batch}; "
                     f"yours is {t.effective_batch}. Accuracy may differ (use --accum-steps to match).")


def describe_fastpath(fp) -> str:
    if fp is None:
        return "off: plain eager path (the model's neurons, no compile)"
    compiled = {False: "no compile", "model": "whole model compiled (backward not bitwise-faithful)",
                "blocks": "blocks compiled", "neurons": "neurons compiled"}[fp.compile]
    extras = [name for name in ("channels_last", "grad_checkpointing", "compact_spikes") if getattr(fp, name)]
    return f"{fp.neuron_impl} neurons, {compiled}" + "".join(f", {e}" for e in extras)


def describe_schedule(cfg, total_epochs: int) -> str:
    """The warm-up/cooldown arithmetic in words: epochs + cooldown = total, warm-up inside ``epochs``."""
    if cfg.sched == "none":
        return f"constant lr for {total_epochs} epochs"
    warm = f", the first {cfg.warmup_epochs} of them linear warm-up" if cfg.warmup_epochs else ""
    cool = f" + {cfg.cooldown_epochs} cooldown epochs at min_lr {cfg.min_lr:g}" if cfg.cooldown_epochs else ""
    return (f"{cfg.sched} over {cfg.epochs} epochs{warm}{cool} = {total_epochs} epochs in all (0..{total_epochs - 1}), "
            f"stepped per {'update' if cfg.sched_on_updates else 'epoch'}")


def versions() -> Dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "timm", "spikingjelly", "torchvision", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def report_reconciled(logger, state) -> None:
    """Say which ``summary.csv`` rows a resume restored from the checkpoint, and which neither file holds."""
    if logger.restored and state.get("other_folder"):
        _log.info(f"summary.csv: the rows of epochs {epochs_text(logger.restored)} come from {state['path']}, "
                  f"the checkpoint this run continues")
    elif logger.restored:
        _log.warning(f"summary.csv lacked the rows of epochs {epochs_text(logger.restored)}: restored them from "
                     f"{state['path']}")
    if logger.missing:
        _log.warning(f"summary.csv has no rows for epochs {epochs_text(logger.missing)} and {state['path']} "
                     f"does not carry them (written by an older version): those rows are lost; the run goes on")


def epochs_text(epochs) -> str:
    return ", ".join(str(e) for e in epochs)


def rederive_best(state, best_path: str) -> None:
    """``best.pth.tar`` after a run that ended between ``last.pth.tar`` and the copy: copied from the checkpoint
    (it holds the best epoch); a best.pth.tar that cannot be re-derived is named as missing."""
    if state is None or int(state.get("best_epoch", -1)) < 0:
        return
    best_epoch = int(state["best_epoch"])
    have = checkpoint_position(best_path)
    if have is not None and have["epoch"] == best_epoch and not have["partial_epoch"]:
        return
    if best_epoch == int(state["epoch"]) and not state.get("partial_epoch") and state.get("other_folder"):
        copy_checkpoint(state["path"], best_path)
        _log.info(f"best.pth.tar: a copy of {state['path']} (epoch {best_epoch}, the best so far of the run this "
                  f"one continues)")
    elif state.get("other_folder"):
        _log.info(f"best.pth.tar is written once an epoch beats {state.get('best_metric')}, the best of the run "
                  f"this one continues (its epoch {best_epoch}, in {os.path.dirname(os.path.abspath(state['path']))})")
    elif best_epoch == int(state["epoch"]) and not state.get("partial_epoch"):
        copy_checkpoint(state["path"], best_path)
        _log.warning(f"best.pth.tar did not hold epoch {best_epoch} (the run ended before copying it): "
                     f"re-derived it from {state['path']}")
    else:
        _log.warning(f"warning: best.pth.tar does not hold the best epoch {best_epoch} "
                     f"({'it is missing' if have is None else 'it holds epoch %d' % have['epoch']}) and "
                     f"{state['path']} holds a later position: best.pth.tar is rewritten when an epoch beats "
                     f"{state.get('best_metric')}")


def data_changed(state, data, start_epoch: int, partial, best) -> bool:
    """Compare the datasets with those the checkpoint was written with; warn (rank 0) and return True when the
    training set changed. Inside an epoch the caller then starts that epoch again: its saved position counts
    samples of an order computed for the old set."""
    saved = state.get("data") or {}
    train, evals = describe_data_change(saved.get("train"), data["train"]), \
        describe_data_change(saved.get("eval"), data["eval"])
    if is_main() and train:
        then = (f"epoch {start_epoch} starts again from its first step (its sample order was computed for the old "
                f"set; the {partial['step']} steps done stay in the weights)" if partial else
                f"epochs from {start_epoch} on train on the set as it is now")
        _log.warning(f"warning: the training set changed since {state['path']} was written ({train}): {then}")
    if is_main() and evals:
        _log.warning(f"warning: the evaluation set changed since {state['path']} was written ({evals}): the top-1 of "
                     f"epochs from {start_epoch} on is not comparable with the earlier rows of summary.csv"
                     + (f" nor with the best so far ({best['metric']:.2f} at epoch {best['epoch']})"
                        if best["metric"] is not None else ""))
    return bool(train)
