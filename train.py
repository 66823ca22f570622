#!/usr/bin/env python3
"""Train any registered spiking model on any supported dataset from one YAML config.

    python train.py -c demo/digits.yaml                      # the bundled demo (CPU, minutes)
    python train.py -c cifar10-100/cifar100.yaml --model max_resnet18 --batch-size 128
    torchrun --nproc_per_node 8 train.py -c imagenet/10_768_t4.yaml
    python train.py -c cifar10-100/cifar10.yaml --resume auto  # continue output/cifar10

Every config key is also a flag (``--key value``); ``python train.py -h`` lists them. A run writes
``<output>/<experiment>/``: args.yaml, summary.csv, learning_curve.png, tensorboard/, last.pth.tar,
best.pth.tar, status.json, and holds run.lock while it runs. A folder that holds a run is never
started over without ``--overwrite true``; SIGTERM/SIGUSR1/Ctrl-C save a resumable checkpoint and
print the command that continues (docs/training.md).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def _load_datasets(cfg: Config, world_size: int):
    """``(train_set, eval_set)``, built before the run folder is touched: a missing or wrongly laid-out dataset
    folder, and a batch larger than a process's share of the training set (an epoch of zero steps), stop the
    run before ``run.lock`` or ``status.json`` is written."""
    from utils import data as data_lib

    train_set, eval_set = data_lib.create_datasets(cfg)
    per_rank = len(train_set) // world_size
    if per_rank < cfg.batch_size:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} is larger than the {per_rank} training samples "
                          f"per process ({len(train_set)} in {cfg.dataset} / {world_size} process(es)), so an epoch "
                          f"would have no step; lower --batch-size to at most {per_rank}")
    return train_set, eval_set


def _make_loaders(cfg: Config, train_set, eval_set, dist_info):
    from torch.utils.data import DataLoader

    from utils.training.distributed import ShardSampler
    from utils.training.engine import SampleSeededDataset, SeededDistributedSampler, seed_worker

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


def _describe_fastpath(fp) -> str:
    if fp is None:
        return "off: plain eager path (the model's neurons, no compile)"
    compiled = {False: "no compile", "model": "whole model compiled (backward not bitwise-faithful)",
                "blocks": "blocks compiled", "neurons": "neurons compiled"}[fp.compile]
    extras = [name for name in ("channels_last", "grad_checkpointing", "compact_spikes") if getattr(fp, name)]
    return f"{fp.neuron_impl} neurons, {compiled}" + "".join(f", {e}" for e in extras)


def _describe_schedule(cfg, total_epochs: int) -> str:
    """The warm-up/cooldown arithmetic in words: epochs + cooldown = total, warm-up inside ``epochs``."""
    if cfg.sched == "none":
        return f"constant lr for {total_epochs} epochs"
    warm = f", the first {cfg.warmup_epochs} of them linear warm-up" if cfg.warmup_epochs else ""
    cool = f" + {cfg.cooldown_epochs} cooldown epochs at min_lr {cfg.min_lr:g}" if cfg.cooldown_epochs else ""
    return (f"{cfg.sched} over {cfg.epochs} epochs{warm}{cool} = {total_epochs} epochs in all (0..{total_epochs - 1}), "
            f"stepped per {'update' if cfg.sched_on_updates else 'epoch'}")


def _plain(d):
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if d is None or isinstance(d, (bool, int, float, str)):
        return d
    return str(d)


class TrainingStopped(Exception):
    """A stop signal ended the run after a resumable checkpoint (or before any work)."""

    def __init__(self, signum: int, where: str):
        super().__init__(where)
        self.signum, self.where = signum, where


class StopSignals:
    """SIGTERM, SIGUSR1 (SLURM's warning before a time-out) and SIGINT ask the run to stop after the current
    optimizer step: ``train.py`` then saves a resumable checkpoint and exits with 128 + the signal number.
    A second SIGINT stops at once (KeyboardInterrupt; the last checkpoint is then the last finished epoch)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after the current step and saving a checkpoint"
              f"{' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else ''}", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        return self.signum is not None


def _setup_process(cfg: Config):
    """Distributed init, console logging, threads and determinism; returns the DistInfo (with ``.threads``)."""
    global _log
    from utils.training.determinism import apply_determinism, resolve_deterministic
    from utils.training.distributed import init_distributed
    from utils.tools.doctor import cheap_checks
    from utils.training.logger import setup_console_logging
    from utils.training.threads import ThreadPolicy, loader_workers

    try:
        dist_info = init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    _log = setup_console_logging(dist_info.is_main)
    for check in cheap_checks(cfg, dist_info.device):  # before anything is written
        if check.status == "FAIL":
            raise ConfigError(f"preflight: {check.name}: {check.detail}; fix: {check.fix}")
    dist_info.threads = ThreadPolicy.start(cfg.threads, dist_info.world_size)
    if cfg.workers is None:  # auto: the CPU cores of this process's share of the machine
        cfg.workers = loader_workers(dist_info.device.type, int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                              dist_info.world_size)))
    cfg.deterministic = resolve_deterministic(cfg.deterministic, dist_info.device)
    apply_determinism(cfg.deterministic)
    return dist_info


def _claim_run_folder(cfg: Config, folder, command: str) -> Optional[Dict[str, Any]]:
    """Lock the run folder and read what to resume (a training state, or None to start at epoch 0).

    A fresh start over a folder that holds a run stops unless ``--overwrite``; every process gets rank 0's
    answer. Workers torchrun restarted continue the run their launch started (``status.json`` names the
    launch) from its last checkpoint, whatever ``--resume``/``--overwrite`` said.
    """
    from utils.training.checkpoint import auto_resume_path, read_training_state
    from utils.training.distributed import broadcast_object, elastic_restart
    from utils.training.run_folder import read_status

    error, resume, launch = None, cfg.resume, elastic_restart()
    if folder is not None:
        try:
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


def _report_resume(cfg: Config, state: Dict[str, Any], start_epoch: int, world_size: int) -> None:
    partial = state.get("partial_epoch")
    where = f"epoch {start_epoch}, step {partial['step']}" if partial else f"epoch {start_epoch}"
    _log.info(f"resumed from {state['path']} (epoch {state['epoch']} done; continuing at {where})")
    saved, now = state.get("config", {}), _plain(vars(cfg))
    changed = [f"{k} {saved[k]} -> {v}" for k, v in now.items()
               if k not in ("resume", "overwrite", "config") and k in saved and saved[k] != v]
    if changed:
        _log.warning(f"changed since the checkpoint, in effect from here on (the lr schedule is rebuilt from the "
                     f"current config at epoch {start_epoch}): {', '.join(changed)}")
    if state.get("world_size", world_size) != world_size:
        _log.warning(f"warning: checkpoint was written with world size {state['world_size']}, now {world_size}; "
                     f"the effective batch changed (and an lr set by blr), so from here the run continues but no "
                     f"longer equals an uninterrupted one (docs/training.md, 'Many nodes')")


def _announce(cfg, t, run_dir, info, num_classes, n_train, n_eval, dist_info) -> None:
    """The banner on the console and ``args.yaml`` (config + what was resolved) in the run folder."""
    import models
    from utils.io.atomic import atomic_write

    neuron_impl = models.describe_neurons(t.eval_model, dist_info.device)
    run_info = {
        "versions": _versions(), "git_commit": _git_commit(), "device": str(dist_info.device),
        "world_size": dist_info.world_size, "effective_batch": t.effective_batch, "lr": t.lr,
        "num_classes": num_classes, "params": t.n_params, "T": getattr(t.eval_model, "T", cfg.T),
        "neuron_implementation": neuron_impl,
        "fastpath": dataclasses.asdict(t.fastpath) if t.fastpath is not None else "off (plain eager path)",
        "total_epochs": t.total_epochs, "threads": dist_info.threads.describe(),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    atomic_write(os.path.join(run_dir, "args.yaml"), dump_yaml({**_plain(vars(cfg)), "run_info": _plain(run_info)}))
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
        f"schedule    {_describe_schedule(cfg, t.total_epochs)}",
        f"device      {dist_info.device}  amp {cfg.amp}  channels_last {t.channels_last}  ema {cfg.model_ema}",
        f"threads     {dist_info.threads.describe()}",
        f"fast path   {_describe_fastpath(t.fastpath)}",
        f"neurons     {neuron_impl}",
        f"versions    torch {v['torch']}  timm {v['timm']}  spikingjelly {v['spikingjelly']}  cuda {v['cuda']}",
        f"run folder  {os.path.abspath(run_dir)}",
    ]))
    if cfg.reference_batch and cfg.reference_batch != t.effective_batch:
        _log.warning(f"note: the published recipe used an effective batch of {cfg.reference_batch}; "
                     f"yours is {t.effective_batch}. Accuracy may differ (use --accum-steps to match).")


def run(cfg: Config, stop: Optional[StopSignals] = None, command: str = "") -> Dict[str, Any]:
    """Train according to ``cfg``; returns ``{'best_top1', 'best_epoch', 'run_dir'}``.

    Setup (run folder, resume state) -> training objects -> epochs (:func:`_train`). ``stop`` (installed
    signal handlers) ends the run after the current step with a resumable checkpoint
    (:class:`TrainingStopped`); ``command`` is written into ``run.lock``.
    """
    from utils.io.atomic import FileWriteError
    from utils.config import check_run_paths
    from utils.training.engine import NonFiniteLossError
    from utils.errors import INPUT_ERRORS
    from utils.training.run_folder import RunFolder

    check_run_paths(cfg)
    dist_info = _setup_process(cfg)
    datasets = _load_datasets(cfg, dist_info.world_size)
    run_dir = os.path.join(cfg.output, cfg.experiment)
    folder = RunFolder(run_dir) if dist_info.is_main else None
    new_folder = not os.path.exists(run_dir)  # a setup refusal leaves no folder behind (remove_if_unused)
    try:
        state = _claim_run_folder(cfg, folder, command or "train.py")
        total = cfg.epochs + cfg.cooldown_epochs
        if state is not None and int(state["epoch"]) + 1 >= total and not state.get("partial_epoch"):
            return _finished(cfg, state, run_dir, total, dist_info.is_main, folder)
        _rank0_writes(dist_info, lambda: folder.write_status(
            state="running", epoch=int(state["epoch"]) if state else -1, total_epochs=total,
            best_top1=state.get("best_metric") if state else None,
            best_epoch=int(state.get("best_epoch", -1)) if state else -1, exit_message="",
            launch=os.environ.get("TORCHELASTIC_RUN_ID")))  # torchrun's launch: its restarts continue this run
        stop = stop or StopSignals()
        try:
            result = _train(cfg, dist_info, run_dir, state, stop, folder, datasets)
        except BaseException as err:
            if stop.requested() and not isinstance(err, (TrainingStopped, KeyboardInterrupt, FileWriteError)):
                # e.g. torch.compile's workers, stopped by the same signal: the run was stopped, not broken
                err = TrainingStopped(stop.signum, f"before its next step could finish ({type(err).__name__} in "
                                                   f"the work the signal interrupted; the last checkpoint is kept)")
            if folder is not None:
                kind = ("diverged" if isinstance(err, NonFiniteLossError) else
                        "interrupted" if isinstance(err, (TrainingStopped, KeyboardInterrupt)) else "failed")
                try:
                    folder.write_status(state=kind, exit_message=f"{type(err).__name__}: {err}")
                except FileWriteError as status_err:  # the disk refuses: read_status reconciles with the checkpoint
                    if isinstance(err, FileWriteError) and status_err.path != err.path:
                        err.kept += f" {os.path.basename(status_err.path)} could not be updated either."
            if isinstance(err, TrainingStopped):
                raise err from None
            raise
        if folder is not None:
            folder.write_status(state="finished", exit_message="done")
        return result
    finally:
        if folder is not None:
            if new_folder and isinstance(sys.exc_info()[1], INPUT_ERRORS):  # refused: e.g. --amp fp16 on a CPU
                folder.remove_if_unused()
            folder.release()


def _finished(cfg: Config, state: Dict[str, Any], run_dir: str, total: int, main: bool, folder=None) -> Dict[str, Any]:
    """``--resume`` of a run that has done all its epochs: say so and stop (nothing is rewritten, unless the run was
    killed after its last checkpoint: then the files that follow it are completed, :func:`_complete_files`).

    ``--overwrite true`` cannot be honoured together with ``--resume``: that is refused (ConfigError)."""
    best, best_epoch = state.get("best_metric"), int(state.get("best_epoch", -1))
    best_txt = f"best top-1 {best:.2f}% at epoch {best_epoch}" if best is not None else "no evaluation yet"
    done = f"run {os.path.abspath(run_dir)} is finished ({int(state['epoch']) + 1}/{total} epochs, {best_txt})"
    if cfg.overwrite:
        raise ConfigError(f"{done}; --resume continues a run, so --overwrite true has nothing to replace. To start "
                          f"this run over, drop --resume (keep --overwrite true); to train it longer, drop "
                          f"--overwrite and pass a larger --epochs with --resume auto")
    if folder is not None and (folder.read_state() or {}).get("state") != "finished":
        _complete_files(cfg, state, folder, total)
    if main:
        _log.info(f"{done}. To train it longer pass a larger --epochs with --resume auto; to start a new run choose "
                  f"another --experiment (or run without --resume and with --overwrite true to replace this one).")
    return {"best_top1": best, "best_epoch": best_epoch, "run_dir": run_dir, "finished": True}


def _complete_files(cfg: Config, state: Dict[str, Any], folder, total: int) -> None:
    """A run killed after writing its last epoch's ``last.pth.tar``: write what follows it from the checkpoint
    (``summary.csv`` rows, ``best.pth.tar``, ``learning_curve.png``) and mark ``status.json`` finished."""
    from utils.training.logger import RunLogger

    import copy

    quiet = copy.copy(cfg)
    quiet.tensorboard = quiet.log_wandb = False
    logger = RunLogger(folder.path, quiet, ema=bool(cfg.model_ema), start_epoch=total, history=state.get("history", []))
    _report_reconciled(logger, state)
    _rederive_best(state, os.path.join(folder.path, "best.pth.tar"))
    if cfg.plot and logger.rows:
        logger.plot()
    folder.status = folder.read_state() or {}
    folder.write_status(state="finished", epoch=int(state["epoch"]), total_epochs=total,
                        best_top1=state.get("best_metric"), best_epoch=int(state.get("best_epoch", -1)),
                        exit_message="done (status completed by --resume: the run had stopped after its last "
                                     "checkpoint)")
    _log.info(f"the run had stopped after writing its last checkpoint: completed status.json, summary.csv, "
              f"best.pth.tar{' and learning_curve.png' if cfg.plot else ''} from {state['path']}")


def _train(cfg, dist_info, run_dir, state, stop, folder, datasets) -> Dict[str, Any]:
    """Loaders, model and training objects for ``datasets`` (train, eval), then the epochs."""
    return _run_epochs(_setup_run(cfg, dist_info, run_dir, state, stop, folder, datasets))


@dataclasses.dataclass
class _Run:
    """What the epochs of a run share: the config and process, the training objects and loaders, where the run
    stands (resume position, best so far, every summary row) and its files (``held``: what last.pth.tar holds,
    for the message when the disk fails)."""

    cfg: Config
    dist_info: Any
    stop: StopSignals
    folder: Any  # the RunFolder on rank 0, None elsewhere
    run_dir: str
    t: Any  # utils.training.engine's training objects
    train_loader: Any
    eval_loader: Any
    train_sampler: Any
    state: Optional[Dict[str, Any]]  # the checkpoint resumed from
    start_epoch: int
    partial: Optional[Dict[str, Any]]  # the position inside start_epoch, until that epoch has started
    best: Dict[str, Any]
    history: List[Dict[str, Any]]
    held: Optional[str] = None
    data: Optional[Dict[str, Any]] = None  # the datasets' fingerprints, saved with every checkpoint
    logger: Any = None  # rank 0's RunLogger
    skip: int = 0  # the current epoch's first sample (per process) and step
    start_step: int = 0

    @property
    def last_path(self) -> str:
        return os.path.join(self.run_dir, "last.pth.tar")

    @property
    def best_path(self) -> str:
        return os.path.join(self.run_dir, "best.pth.tar")

    @property
    def metric_key(self) -> str:
        return "ema_eval_top1" if self.cfg.eval_metric == "ema_top1" else "eval_top1"

    def kept(self, otherwise: str) -> str:
        """What the run folder still holds after a refused write."""
        return f"{self.last_path} still holds {self.held}." if self.held else otherwise

    def checkpoint(self, **fields) -> Dict[str, Any]:
        from utils.training.engine import training_state

        cfg, best = self.cfg, self.best
        return training_state(self.t, arch=cfg.model, num_updates=self.t.num_updates, best_metric=best["metric"],
                              best_epoch=best["epoch"], metric=best["last"], world_size=self.dist_info.world_size,
                              config=_plain(vars(cfg)), history=self.history, data=self.data, **fields)

    def save_position(self, epoch: int, step: int, loss_sum: float) -> None:
        """``last.pth.tar`` at ``step`` steps into ``epoch`` (``--resume auto`` continues there)."""
        from utils.training.checkpoint import save_checkpoint

        def write() -> None:
            samples = self.skip + (step - self.start_step) * self.cfg.batch_size  # per process, from the epoch's start
            save_checkpoint(self.checkpoint(epoch=epoch - 1, partial_epoch={"epoch": epoch, "step": step,
                                                                            "samples": samples, "loss_sum": loss_sum}),
                            self.last_path)
            self.held = f"the position in epoch {epoch} after step {step}"

        _rank0_writes(self.dist_info, write)

    def on_log(self, step: int, loss: float, lr: float) -> None:
        threads = self.dist_info.threads
        if threads.update() is not None and self.dist_info.is_main:
            _log.info(f"threads: {threads.threads} (other processes now use "
                      f"{threads.others:.1f} of {threads.cpus} CPUs)")
        if self.logger is not None:
            self.logger.log_step(step, loss, lr)

    def agreed_stop(self) -> bool:
        from utils.training.distributed import all_reduce_sum

        if self.dist_info.world_size == 1:
            return self.stop.requested()
        return float(all_reduce_sum(torch.tensor(float(self.stop.requested()), device=self.dist_info.device))) > 0


def _setup_run(cfg, dist_info, run_dir, state, stop, folder, datasets) -> _Run:
    """Loaders, model and training objects, the resume position, and rank 0's banner, args.yaml and logger
    (summary.csv rows restored from the checkpoint, best.pth.tar re-derived)."""
    from utils import data as data_lib
    from utils.io.atomic import FileWriteError
    from utils.training.checkpoint import load_checkpoint, restore_rng_state
    from utils.training.engine import build_model, build_training, seed_everything
    from utils.training.logger import RunLogger
    from utils.training.memory_plan import device_memory_warning
    from utils.data.fingerprint import dataset_fingerprint

    main, device = dist_info.is_main, dist_info.device
    if main and (memory_warning := device_memory_warning(cfg, device)):  # CUDA only: planned step vs the device
        _log.warning(memory_warning)
    train_set, eval_set = datasets
    info = data_lib.dataset_info(cfg.dataset)
    num_classes = cfg.num_classes or info["num_classes"]
    train_loader, eval_loader, train_sampler = _make_loaders(cfg, train_set, eval_set, dist_info)
    seed_everything(cfg.seed)  # same init on every rank
    model = build_model(cfg, num_classes)
    if cfg.initial_checkpoint:
        load_checkpoint(model, cfg.initial_checkpoint, strict=True)
    t = build_training(cfg, model, device, dist_info.world_size, len(train_loader),
                       data_lib.create_mixup(cfg, num_classes), state)
    for warning in t.warnings if main else ():
        _log.warning(warning)

    # ---- resume position
    start_epoch, best, partial = _position(state)  # the update count is restored into t (restore_training)
    data = {"train": dataset_fingerprint(train_set), "eval": dataset_fingerprint(eval_set)}
    if state is not None and _data_changed(state, data, start_epoch, partial, best) and partial:
        partial = None  # the saved position indexes a sample order of the old data: the epoch starts again
        t.num_updates = start_epoch * t.updates_per_epoch
    if state is not None:
        if partial is None:  # inside an epoch the RNG is restored once its loader iterator exists
            restore_rng_state(state["rng"])
        if main:
            _report_resume(cfg, state, start_epoch, dist_info.world_size)
    # every epoch's summary.csv row travels in the checkpoint: a resume restores rows summary.csv lacks
    history = [r for r in (state or {}).get("history", []) if int(r["epoch"]) < start_epoch]
    run = _Run(cfg, dist_info, stop, folder, run_dir, t, train_loader, eval_loader, train_sampler, state,
               start_epoch, partial, best, history, data=data)
    if state is not None:
        run.held = (f"the position in epoch {start_epoch} after step {partial['step']}" if partial
                    else f"epoch {start_epoch - 1}")

    # ---- rank 0's files
    def setup_files() -> None:
        _announce(cfg, t, run_dir, info, num_classes, len(train_set), len(eval_set), dist_info)
        run.logger = RunLogger(run_dir, cfg, ema=t.ema is not None, start_epoch=start_epoch,
                               history=history)
        _report_reconciled(run.logger, state)
        _rederive_best(state, run.best_path)

    try:
        _rank0_writes(dist_info, setup_files)
    except FileWriteError as err:
        err.kept = run.kept("Nothing was trained yet.")
        raise
    return run


def _run_epochs(run: _Run) -> Dict[str, Any]:
    """The epochs from the resume position on, each ended by :func:`_end_epoch`. A stop signal or an unreadable
    training sample saves the position reached in ``last.pth.tar`` and ends the run."""
    from utils import data as data_lib
    from utils.io.atomic import FileWriteError
    from utils.training.engine import EpochStart, epoch_seed, seed_everything, start_epoch_schedule, train_one_epoch

    cfg, t, main, stop = run.cfg, run.t, run.dist_info.is_main, run.stop
    try:
        for epoch in range(run.start_epoch, t.total_epochs):
            if run.agreed_stop():
                raise TrainingStopped(stop.signum, f"before epoch {epoch} ({run.last_path} holds epoch {epoch - 1})")
            t_epoch = time.perf_counter()
            seed_everything(epoch_seed(cfg.seed, epoch, run.dist_info.rank))
            partial = run.partial
            run.skip, run.start_step = _resume_offset(partial, run.state, cfg.batch_size, len(run.train_sampler),
                                                      len(run.train_loader), cfg.max_train_batches)
            if partial and run.start_step != partial["step"] and main:
                _log.info(f"epoch {epoch} continues at its sample {run.skip} (per process): step {run.start_step} "
                          f"of batch size {cfg.batch_size}")
            start = EpochStart(run.start_step, partial["loss_sum"], run.state["rng"]) if partial else EpochStart()
            run.train_sampler.set_epoch(epoch, skip=run.skip)
            if t.mixup_fn is not None and hasattr(t.mixup_fn, "mixup_enabled"):
                t.mixup_fn.mixup_enabled = not (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch)
            lr_epoch = start_epoch_schedule(t, epoch, resumed_inside=bool(partial))
            stats = train_one_epoch(t, run.train_loader, epoch, start=start, max_batches=cfg.max_train_batches,
                                    log_interval=cfg.log_interval, progress=cfg.progress and main,
                                    on_log=run.on_log, should_stop=stop.requested,
                                    loader_errors=(data_lib.BadSampleError,))
            run.partial = None

            if stats["error"] is not None:  # an unreadable training sample: keep the work done, name the file
                run.save_position(epoch, stats["stopped_at"], stats["loss_sum"])
                raise _saved(stats["error"], f"epoch {epoch}, step {stats['stopped_at']}")
            if stats["stopped_at"] is not None:  # a stop signal
                run.save_position(epoch, stats["stopped_at"], stats["loss_sum"])
                raise TrainingStopped(stop.signum, f"in epoch {epoch} after step {stats['stopped_at']} "
                                                   f"({run.last_path} holds that position)")
            _end_epoch(run, epoch, lr_epoch, stats, t_epoch)
    except FileWriteError as err:
        err.kept = run.kept("No checkpoint was written yet.")
        raise
    finally:
        if run.logger is not None:
            run.logger.close()
    best = run.best
    if main:
        best_txt = f"{best['metric']:.2f}% at epoch {best['epoch']}" if best["metric"] is not None else "n/a"
        outputs = [n for n in ("summary.csv", "learning_curve.png", "tensorboard/", "last.pth.tar", "best.pth.tar",
                               "args.yaml") if os.path.exists(os.path.join(run.run_dir, n))]
        _log.info(f"done. best {run.metric_key.replace('eval_', '')} {best_txt}\n"
                  f"outputs in {os.path.abspath(run.run_dir)}: {', '.join(outputs)}")
    return {"best_top1": best["metric"], "best_epoch": best["epoch"], "run_dir": run.run_dir}


def _end_epoch(run: _Run, epoch: int, lr_epoch: float, stats: Dict[str, Any], t_epoch: float) -> None:
    """Evaluate, update the best so far, write the run folder (:func:`_commit_epoch` on rank 0) and print the
    epoch's line. An unreadable eval sample keeps the epoch's training in ``last.pth.tar``."""
    from utils import data as data_lib

    cfg, t, best = run.cfg, run.t, run.best
    try:
        ev = _evaluate(t, run.eval_loader, run.dist_info.device, cfg.max_eval_batches)
    except data_lib.BadSampleError as err:  # the epoch's training is kept: a resume only evaluates
        steps = len(run.train_loader)
        run.save_position(epoch, min(steps, cfg.max_train_batches or steps), stats["loss_sum"])
        raise _saved(err, f"the evaluation after epoch {epoch}") from None
    row = {"epoch": epoch, "lr": lr_epoch, "train_loss": stats["train_loss"], **ev, "img_per_s": stats["img_per_s"]}
    metric = row[run.metric_key]
    if best["metric"] is None or metric > best["metric"]:
        best["metric"], best["epoch"] = metric, epoch
    best["last"] = metric
    row["epoch_seconds"] = time.perf_counter() - t_epoch
    _rank0_writes(run.dist_info, _commit_epoch, run, epoch, row)
    if run.dist_info.is_main:
        ema_txt = f"  ema_top1 {row['ema_eval_top1']:.2f}" if t.ema is not None else ""
        _log.info(f"epoch {epoch:>3}/{t.total_epochs - 1}  lr {lr_epoch:.3g}"
                  f"  train_loss {stats['train_loss']:.4f}  eval_loss {row['eval_loss']:.4f}"
                  f"  top1 {row['eval_top1']:.2f}  top5 {row['eval_top5']:.2f}{ema_txt}"
                  f"  best {best['metric']:.2f} (ep {best['epoch']})  {stats['img_per_s']:.0f} img/s"
                  f"  {row['epoch_seconds']:.1f}s")


def _commit_epoch(run: _Run, epoch: int, row: Dict[str, Any]) -> None:
    """The epoch's writes, in the order that makes every prefix of them consistent: ``last.pth.tar``
    (the commit point: weights, position, best, every row so far), then ``status.json``, ``best.pth.tar``
    (a copy of last.pth.tar) and the ``summary.csv`` row, which a resume re-derives from the checkpoint."""
    from utils.training.checkpoint import copy_checkpoint, save_checkpoint

    run.history.append(_plain(row))
    save_checkpoint(run.checkpoint(epoch=epoch), run.last_path)
    run.held = f"epoch {epoch}"
    run.folder.write_status(epoch=epoch, best_top1=run.best["metric"], best_epoch=run.best["epoch"])
    if run.best["epoch"] == epoch:
        run.held += " (the best so far: a resume re-derives best.pth.tar from it)"
        copy_checkpoint(run.last_path, run.best_path)
        run.held = f"epoch {epoch}"
    if run.cfg.checkpoint_hist:
        _keep_best_epochs(run, epoch)
    run.logger.log_epoch(row)


def _keep_best_epochs(run: _Run, epoch: int) -> None:
    """``checkpoint_hist`` (timm's ``--checkpoint-hist``): ``checkpoint-<epoch>.pth.tar`` for the N best epochs
    by ``eval_metric`` so far (ties: the earlier epoch); copies of last.pth.tar, so a crash here loses nothing."""
    from utils.training.checkpoint import copy_checkpoint

    scored = [(-float(r[run.metric_key]), int(r["epoch"])) for r in run.history
              if r.get(run.metric_key) not in (None, "")]
    keep = {e for _, e in sorted(scored)[:run.cfg.checkpoint_hist]}
    if epoch in keep:
        copy_checkpoint(run.last_path, os.path.join(run.run_dir, f"checkpoint-{epoch}.pth.tar"))
    for name in os.listdir(run.run_dir):
        stem = name[len("checkpoint-"):-len(".pth.tar")] if name.endswith(".pth.tar") else ""
        if name.startswith("checkpoint-") and stem.isdigit() and int(stem) not in keep:
            os.remove(os.path.join(run.run_dir, name))


def _resume_offset(partial, state, batch_size: int, per_process: int, steps: int, max_steps: int = 0):
    """(samples to skip, first step) to continue an epoch at the first sample it has not trained on.

    Counted in samples, so a batch size changed on resume neither repeats nor skips samples. The step
    index is that of the new batch size: counted back from the epoch's end, so that the epoch's last step
    (and the last update of an accumulation group) stays its last, or from its start when
    ``max_steps`` (``max_train_batches``) ends the epoch early."""
    if not partial:
        return 0, 0
    saved_batch = int((state.get("config") or {}).get("batch_size", batch_size))
    samples = int(partial.get("samples", partial["step"] * saved_batch))
    if samples == partial["step"] * batch_size:  # the same batch size: the same steps
        return samples, partial["step"]
    if max_steps and max_steps < steps:
        return samples, -(-samples // batch_size)
    return samples, max(0, steps - (per_process - samples) // batch_size)


def _report_reconciled(logger, state) -> None:
    """Say which ``summary.csv`` rows a resume restored from the checkpoint, and which neither file holds."""
    if logger.restored and state.get("other_folder"):
        _log.info(f"summary.csv: the rows of epochs {_epochs_text(logger.restored)} come from {state['path']}, "
                  f"the checkpoint this run continues")
    elif logger.restored:
        _log.warning(f"summary.csv lacked the rows of epochs {_epochs_text(logger.restored)}: restored them from "
                     f"{state['path']}")
    if logger.missing:
        _log.warning(f"summary.csv has no rows for epochs {_epochs_text(logger.missing)} and {state['path']} "
                     f"does not carry them (written by an older version): those rows are lost; the run goes on")


def _epochs_text(epochs) -> str:
    return ", ".join(str(e) for e in epochs)


def _rederive_best(state, best_path: str) -> None:
    """``best.pth.tar`` after a run that ended between ``last.pth.tar`` and the copy: copied from the checkpoint
    (it holds the best epoch); a best.pth.tar that cannot be re-derived is named as missing."""
    from utils.training.checkpoint import checkpoint_position, copy_checkpoint

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


def _data_changed(state, data, start_epoch: int, partial, best) -> bool:
    """Compare the datasets with those the checkpoint was written with; warn (rank 0) and return True when the
    training set changed. Inside an epoch the caller then starts that epoch again: its saved position counts
    samples of an order computed for the old set."""
    from utils.data.fingerprint import describe_data_change
    from utils.training.distributed import is_main

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


def _rank0_writes(dist_info, write: Callable[..., None], *args) -> None:
    """Run ``write(*args)`` (rank 0's files of the run folder) on rank 0, then tell every process whether the disk
    refused it: all ranks raise the same :class:`FileWriteError` and exit, none waits at the next collective
    for a rank 0 that has stopped. Also the processes' synchronisation point after the write."""
    from utils.io.atomic import FileWriteError
    from utils.training.distributed import broadcast_object

    error = None
    if dist_info.is_main:
        try:
            write(*args)
        except FileWriteError as err:
            error = err
    if dist_info.world_size > 1:
        shared = broadcast_object((error.path, error.errno, error.reason) if error is not None else None)
        if shared is not None and error is None:
            error = FileWriteError(shared[0], OSError(shared[1], shared[2]))
        if error is not None:
            error.shared = True  # every rank raises it here
    if error is not None:
        raise error


def _saved(err, where: str):
    """``err`` (an unreadable sample) marked as met in ``where`` after the run's position was saved."""
    err.saved_position = where
    return err


def _position(state: Optional[Dict[str, Any]]):
    """(first epoch, best-so-far, position inside the epoch or None) of a checkpoint."""
    if state is None:
        return 0, {"metric": None, "epoch": -1, "last": None}, None
    best = {"metric": state.get("best_metric"), "epoch": int(state.get("best_epoch", -1)), "last": state.get("metric")}
    return int(state["epoch"]) + 1, best, state.get("partial_epoch")


def _evaluate(t, loader, device, max_batches: int) -> Dict[str, float]:
    """The eval columns of a ``summary.csv`` row (the EMA's too when there is one)."""
    from utils.training.engine import evaluate

    row = {}
    for prefix, model in (("", t.eval_model), ("ema_", t.ema.module if t.ema is not None else None)):
        if model is not None:
            ev = evaluate(model, loader, device=device, autocast=t.eval_autocast, channels_last=t.channels_last,
                          max_batches=max_batches)
            row.update({f"{prefix}eval_loss": ev["loss"], f"{prefix}eval_top1": ev["top1"],
                        f"{prefix}eval_top5": ev["top5"]})
    return row


def resume_command(argv: Sequence[str]) -> str:
    """``python train.py <argv without --resume/--overwrite> --resume auto``, shell-quoted."""
    import shlex

    from utils.config import without_options

    out = without_options(argv, valued=("--resume", "--overwrite"))
    return shlex.join(["python", "train.py", *out, "--resume", "auto"])


def build_parser():
    """The command line of ``train.py``: one flag per config key (``utils.config``)."""
    from utils.config import all_options, build_arg_parser

    return build_arg_parser(all_options(), __doc__.split("\n\n")[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.io.atomic import FileWriteError
    from utils.config import input_errors, report_input_error
    from utils.training.distributed import cleanup, is_main
    from utils.training.engine import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, together = None, False  # together: every rank exits here (see utils.training.distributed.cleanup)
    try:
        cfg = parse_config(argv, description=__doc__.split("\n\n")[0])
        with StopSignals() as stop:
            run(cfg, stop, command=" ".join(["train.py", *argv]))
        together = True
        return 0
    except FileWriteError as err:
        together = err.shared
        if is_main():
            print(f"error: {err}. The file that was there before is intact. {err.kept + ' ' if err.kept else ''}"
                  f"{err.remedy}, then continue with:\n  {resume_command(argv)}", file=sys.stderr)
        return 1
    except input_errors() as err:
        if getattr(err, "saved_position", None) and is_main():
            print(f"error: {err}\nThe run stopped in {err.saved_position}; its position is saved. Fix or remove "
                  f"the file, then continue with:\n  {resume_command(argv)}", file=sys.stderr)
            return 2
        return report_input_error(err)
    except NonFiniteLossError as err:
        if is_main():
            last = os.path.join(cfg.output, cfg.experiment, "last.pth.tar")
            kept = (f"The last good checkpoint is kept: {last}. A changed --lr takes effect on resume:\n"
                    f"  {resume_command(argv)} --lr <lower>"
                    if os.path.isfile(last) else "No checkpoint was written yet.")
            print(f"error: training diverged: {err}. Try a lower --lr, --clip-grad 1.0 or --amp none. {kept}",
                  file=sys.stderr)
        return 1
    except TrainingStopped as err:
        if is_main():
            print(f"stopped by {signal.Signals(err.signum).name} {err.where}. Continue with:\n  {resume_command(argv)}",
                  file=sys.stderr)
        return 128 + err.signum
    except OSError as err:  # the last line of defence: paths are checked before the run starts
        from utils.io.paths import describe_os_error

        if is_main():
            print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if is_main() and cfg is not None:
            print(f"\ninterrupted; the last checkpoint is that of the last finished epoch. Continue with:\n"
                  f"  {resume_command(argv)}", file=sys.stderr)
        return 130
    finally:
        cleanup(together)


if __name__ == "__main__":
    sys.exit(main())
