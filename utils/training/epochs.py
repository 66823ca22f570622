"""The epochs of a training run: the state they share (:class:`Run`), the loop (:func:`run_epochs`), evaluation,
and rank 0's run-folder writes after each epoch in the order that keeps every prefix of them consistent."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from utils import data as data_lib
from utils.config import Config
from utils.io.atomic import FileWriteError
from utils.training.checkpoint import copy_checkpoint, save_checkpoint
from utils.training.distributed import all_reduce_sum, broadcast_object
from utils.training.engine import EpochStart, evaluate, start_epoch_schedule, train_one_epoch, training_state
from utils.training.seeding import epoch_seed, seed_everything
from utils.training.stop import StopSignals, TrainingStopped

__all__ = ["Run", "run_epochs", "rank0_writes", "resume_offset", "position", "plain"]

_log = logging.getLogger("train")


def plain(d):
    if isinstance(d, dict):
        return {str(k): plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [plain(v) for v in d]
    if d is None or isinstance(d, (bool, int, float, str)):
        return d
    return str(d)


@dataclasses.dataclass
class Run:
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
        cfg, best = self.cfg, self.best
        return training_state(self.t, arch=cfg.model, num_updates=self.t.num_updates, best_metric=best["metric"],
                              best_epoch=best["epoch"], metric=best["last"], world_size=self.dist_info.world_size,
                              config=plain(vars(cfg)), history=self.history, data=self.data, **fields)

    def save_position(self, epoch: int, step: int, loss_sum: float) -> None:
        """``last.pth.tar`` at ``step`` steps into ``epoch`` (``--resume auto`` continues there)."""
        def write() -> None:
            samples = self.skip + (step - self.start_step) * self.cfg.batch_size  # per process, from the epoch's start
            save_checkpoint(self.checkpoint(epoch=epoch - 1, partial_epoch={"epoch": epoch, "step": step,
                                                                            "samples": samples, "loss_sum": loss_sum}),
                            self.last_path)
            self.held = f"the position in epoch {epoch} after step {step}"

        rank0_writes(self.dist_info, write)

    def on_log(self, step: int, loss: float, lr: float) -> None:
        threads = self.dist_info.threads
        if threads.update() is not None and self.dist_info.is_main:
            _log.info(f"threads: {threads.threads} (other processes now use "
                      f"{threads.others:.1f} of {threads.cpus} CPUs)")
        if self.logger is not None:
            self.logger.log_step(step, loss, lr)

    def agreed_stop(self) -> bool:
        if self.dist_info.world_size == 1:
            return self.stop.requested()
        return float(all_reduce_sum(torch.tensor(float(self.stop.requested()), device=self.dist_info.device))) > 0


def run_epochs(run: Run) -> Dict[str, Any]:
    """The epochs from the resume position on, each ended by :func:`end_epoch`. A stop signal or an unreadable
    training sample saves the position reached in ``last.pth.tar`` and ends the run."""
    cfg, t, main, stop = run.cfg, run.t, run.dist_info.is_main, run.stop
    try:
        for epoch in range(run.start_epoch, t.total_epochs):
            if run.agreed_stop():
                raise TrainingStopped(stop.signum, f"before epoch {epoch} ({run.last_path} holds epoch {epoch - 1})")
            t_epoch = time.perf_counter()
            seed_everything(epoch_seed(cfg.seed, epoch, run.dist_info.rank))
            partial = run.partial
            run.skip, run.start_step = resume_offset(partial, run.state, cfg.batch_size, len(run.train_sampler),
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
                raise saved(stats["error"], f"epoch {epoch}, step {stats['stopped_at']}")
            if stats["stopped_at"] is not None:  # a stop signal
                run.save_position(epoch, stats["stopped_at"], stats["loss_sum"])
                raise TrainingStopped(stop.signum, f"in epoch {epoch} after step {stats['stopped_at']} "
                                                   f"({run.last_path} holds that position)")
            end_epoch(run, epoch, lr_epoch, stats, t_epoch)
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


def end_epoch(run: Run, epoch: int, lr_epoch: float, stats: Dict[str, Any], t_epoch: float) -> None:
    """Evaluate, update the best so far, write the run folder (:func:`commit_epoch` on rank 0) and print the
    epoch's line. An unreadable eval sample keeps the epoch's training in ``last.pth.tar``."""
    cfg, t, best = run.cfg, run.t, run.best
    try:
        ev = evaluate_row(t, run.eval_loader, run.dist_info.device, cfg.max_eval_batches)
    except data_lib.BadSampleError as err:  # the epoch's training is kept: a resume only evaluates
        steps = len(run.train_loader)
        run.save_position(epoch, min(steps, cfg.max_train_batches or steps), stats["loss_sum"])
        raise saved(err, f"the evaluation after epoch {epoch}") from None
    row = {"epoch": epoch, "lr": lr_epoch, "train_loss": stats["train_loss"], **ev, "img_per_s": stats["img_per_s"]}
    metric = row[run.metric_key]
    if best["metric"] is None or metric > best["metric"]:
        best["metric"], best["epoch"] = metric, epoch
    best["last"] = metric
    row["epoch_seconds"] = time.perf_counter() - t_epoch
    rank0_writes(run.dist_info, commit_epoch, run, epoch, row)
    if run.dist_info.is_main:
        ema_txt = f"  ema_top1 {row['ema_eval_top1']:.2f}" if t.ema is not None else ""
        _log.info(f"epoch {epoch:>3}/{t.total_epochs - 1}  lr {lr_epoch:.3g}"
                  f"  train_loss {stats['train_loss']:.4f}  eval_loss {row['eval_loss']:.4f}"
                  f"  top1 {row['eval_top1']:.2f}  top5 {row['eval_top5']:.2f}{ema_txt}"
                  f"  best {best['metric']:.2f} (ep {best['epoch']})  {stats['img_per_s']:.0f} img/s"
                  f"  {row['epoch_seconds']:.1f}s")


def commit_epoch(run: Run, epoch: int, row: Dict[str, Any]) -> None:
    """The epoch's writes, in the order that makes every prefix of them consistent: ``last.pth.tar``
    (the commit point: weights, position, best, every row so far), then ``status.json``, ``best.pth.tar``
    (a copy of last.pth.tar) and the ``summary.csv`` row, which a resume re-derives from the checkpoint."""
    run.history.append(plain(row))
    save_checkpoint(run.checkpoint(epoch=epoch), run.last_path)
    run.held = f"epoch {epoch}"
    run.folder.write_status(epoch=epoch, best_top1=run.best["metric"], best_epoch=run.best["epoch"])
    if run.best["epoch"] == epoch:
        run.held += " (the best so far: a resume re-derives best.pth.tar from it)"
        copy_checkpoint(run.last_path, run.best_path)
        run.held = f"epoch {epoch}"
    if run.cfg.checkpoint_hist:
        keep_best_epochs(run, epoch)
    run.logger.log_epoch(row)


def keep_best_epochs(run: Run, epoch: int) -> None:
    """``checkpoint_hist`` (timm's ``--checkpoint-hist``): ``checkpoint-<epoch>.pth.tar`` for the N best epochs
    by ``eval_metric`` so far (ties: the earlier epoch); copies of last.pth.tar, so a crash here loses nothing."""
    scored = [(-float(r[run.metric_key]), int(r["epoch"])) for r in run.history
              if r.get(run.metric_key) not in (None, "")]
    keep = {e for _, e in sorted(scored)[:run.cfg.checkpoint_hist]}
    if epoch in keep:
        copy_checkpoint(run.last_path, os.path.join(run.run_dir, f"checkpoint-{epoch}.pth.tar"))
    for name in os.listdir(run.run_dir):
        stem = name[len("checkpoint-"):-len(".pth.tar")] if name.endswith(".pth.tar") else ""
        if name.startswith("checkpoint-") and stem.isdigit() and int(stem) not in keep:
            os.remove(os.path.join(run.run_dir, name))


def resume_offset(partial, state, batch_size: int, per_process: int, steps: int, max_steps: int = 0):
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


def rank0_writes(dist_info, write: Callable[..., None], *args) -> None:
    """Run ``write(*args)`` (rank 0's files of the run folder) on rank 0, then tell every process whether the disk
    refused it: all ranks raise the same :class:`FileWriteError` and exit, none waits at the next collective
    for a rank 0 that has stopped. Also the processes' synchronisation point after the write."""
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


def saved(err, where: str):
    """``err`` (an unreadable sample) marked as met in ``where`` after the run's position was saved."""
    err.saved_position = where
    return err


def position(state: Optional[Dict[str, Any]]):
    """(first epoch, best-so-far, position inside the epoch or None) of a checkpoint."""
    if state is None:
        return 0, {"metric": None, "epoch": -1, "last": None}, None
    best = {"metric": state.get("best_metric"), "epoch": int(state.get("best_epoch", -1)), "last": state.get("metric")}
    return int(state["epoch"]) + 1, best, state.get("partial_epoch")


def evaluate_row(t, loader, device, max_batches: int) -> Dict[str, float]:
    """The eval columns of a ``summary.csv`` row (the EMA's too when there is one)."""
    row = {}
    for prefix, model in (("", t.eval_model), ("ema_", t.ema.module if t.ema is not None else None)):
        if model is not None:
            ev = evaluate(model, loader, device=device, autocast=t.eval_autocast, channels_last=t.channels_last,
                          max_batches=max_batches)
            row.update({f"{prefix}eval_loss": ev["loss"], f"{prefix}eval_top1": ev["top1"],
                        f"{prefix}eval_top5": ev["top5"]})
    return row
