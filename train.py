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

import logging
import os
import shlex
import signal
import sys
from typing import Any, Dict, Optional, Sequence

from utils.config import Config, ConfigError, all_options, build_arg_parser, report_input_error, without_options
from utils.errors import INPUT_ERRORS
from utils.io.atomic import FileWriteError
from utils.io.paths import describe_os_error
from utils.training.distributed import cleanup, is_main
from utils.training.epochs import rank0_writes, run_epochs
from utils.training.preflight import check_run_paths, parse_run_config
from utils.training.run_folder import RunFolder
from utils.training.run_setup import claim_run_folder, complete_files, load_datasets, setup_process, setup_run
from utils.training.stop import NonFiniteLossError, StopSignals, TrainingStopped

_log = logging.getLogger("train")


def run(cfg: Config, stop: Optional[StopSignals] = None, command: str = "") -> Dict[str, Any]:
    """Train according to ``cfg``; returns ``{'best_top1', 'best_epoch', 'run_dir'}``.

    Setup (run folder, resume state) -> training objects -> epochs (:func:`_train`). ``stop`` (installed
    signal handlers) ends the run after the current step with a resumable checkpoint
    (:class:`TrainingStopped`); ``command`` is written into ``run.lock``.
    """
    check_run_paths(cfg)
    dist_info = setup_process(cfg)
    datasets = load_datasets(cfg, dist_info.world_size)
    run_dir = os.path.join(cfg.output, cfg.experiment)
    folder = RunFolder(run_dir) if dist_info.is_main else None
    new_folder = not os.path.exists(run_dir)  # a setup refusal leaves no folder behind (remove_if_unused)
    try:
        state = claim_run_folder(cfg, folder, command or "train.py")
        total = cfg.epochs + cfg.cooldown_epochs
        if state is not None and int(state["epoch"]) + 1 >= total and not state.get("partial_epoch"):
            return _finished(cfg, state, run_dir, total, dist_info.is_main, folder)
        rank0_writes(dist_info, lambda: folder.write_status(
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


def _finished(cfg: Config, state: Dict[str, Any], run_dir: str, total: int, main: bool,
              folder=None) -> Dict[str, Any]:
    """``--resume`` of a run that has done all its epochs: say so and stop (nothing is rewritten, unless the run was
    killed after its last checkpoint: then the files that follow it are completed, ``run_setup.complete_files``).

    ``--overwrite true`` cannot be honoured together with ``--resume``: that is refused (ConfigError)."""
    best, best_epoch = state.get("best_metric"), int(state.get("best_epoch", -1))
    best_txt = f"best top-1 {best:.2f}% at epoch {best_epoch}" if best is not None else "no evaluation yet"
    done = f"run {os.path.abspath(run_dir)} is finished ({int(state['epoch']) + 1}/{total} epochs, {best_txt})"
    if cfg.overwrite:
        raise ConfigError(f"{done}; --resume continues a run, so --overwrite true has nothing to replace. To start "
                          f"this run over, drop --resume (keep --overwrite true); to train it longer, drop "
                          f"--overwrite and pass a larger --epochs with --resume auto")
    if folder is not None and (folder.read_state() or {}).get("state") != "finished":
        complete_files(cfg, state, folder, total)
    if main:
        _log.info(f"{done}. To train it longer pass a larger --epochs with --resume auto; to start a new run choose "
                  f"another --experiment (or run without --resume and with --overwrite true to replace this one).")
    return {"best_top1": best, "best_epoch": best_epoch, "run_dir": run_dir, "finished": True}


def _train(cfg, dist_info, run_dir, state, stop, folder, datasets) -> Dict[str, Any]:
    """Loaders, model and training objects for ``datasets`` (train, eval), then the epochs."""
    return run_epochs(setup_run(cfg, dist_info, run_dir, state, stop, folder, datasets))


def resume_command(argv: Sequence[str]) -> str:
    """``python train.py <argv without --resume/--overwrite> --resume auto``, shell-quoted."""
    out = without_options(argv, valued=("--resume", "--overwrite"))
    return shlex.join(["python", "train.py", *out, "--resume", "auto"])


def build_parser():
    """The command line of ``train.py``: one flag per config key (``utils.config``)."""
    return build_arg_parser(all_options(), __doc__.split("\n\n")[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, together = None, False  # together: every rank exits here (see utils.training.distributed.cleanup)
    try:
        cfg = parse_run_config(argv, description=__doc__.split("\n\n")[0])
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
    except INPUT_ERRORS as err:
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
