"""The run folder ``<output>/<experiment>/``: one run at a time, never overwritten by accident, its state on disk.

* :meth:`RunFolder.lock` takes ``run.lock`` with ``fcntl.flock`` for the run's lifetime. The kernel drops
  the lock when the process ends in any way (kill -9 included), so a stale file never blocks; the file
  holds the holder's pid, host and command for the message a second process prints. Other tools treat a
  folder whose ``run.lock`` is flock-held as running (:func:`is_running`).
* :meth:`RunFolder.check_fresh_start` refuses to start a new run over a folder that already holds one.
* :meth:`RunFolder.write_status` keeps ``status.json`` (written atomically) up to date: ``state`` is
  running | finished | failed | interrupted | diverged. It follows ``last.pth.tar`` (the commit point of an
  epoch); :func:`read_status` reconciles the two when the run ended between them.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import dataclasses
from typing import Any, Dict, Optional

import yaml

from utils.atomic_file import FileWriteError, atomic_write
from utils.config import ConfigError
from utils.training.logger import read_summary

__all__ = ["RunFolder", "RunState", "run_state", "read_top1", "is_running", "read_status", "RUN_FILES", "LOCK_NAME",
           "STATUS_NAME"]

LOCK_NAME = "run.lock"
STATUS_NAME = "status.json"
# files that mean "a run lives here" (and that --overwrite removes, with the other outputs below)
RUN_FILES = ("args.yaml", "summary.csv", "last.pth.tar", "best.pth.tar")
_OUTPUTS = RUN_FILES + ("learning_curve.png", STATUS_NAME, "wandb_id.txt", "tensorboard")


def is_running(run_dir: str) -> bool:
    """True when a live process holds ``<run_dir>/run.lock``."""
    path = os.path.join(run_dir, LOCK_NAME)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def read_status(run_dir: str) -> Optional[Dict[str, Any]]:
    """``<run_dir>/status.json`` as a dict, or None when absent or unreadable.

    ``last.pth.tar`` is the run's commit point and ``status.json`` follows it: when the checkpoint is the
    newer file (the run was killed, or the disk refused ``status.json``, between the two writes) its
    epoch and best are read from the checkpoint, so the answer agrees with what ``--resume auto`` does.
    """
    path = os.path.join(run_dir, STATUS_NAME)
    try:
        with open(path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    last = os.path.join(run_dir, "last.pth.tar")
    try:
        newer = os.stat(last).st_mtime_ns > os.stat(path).st_mtime_ns
    except OSError:
        newer = False
    if newer and status.get("state") != "finished":
        from utils.training.checkpoint import checkpoint_position

        held = checkpoint_position(last)
        if held is not None and held["epoch"] != status.get("epoch"):
            status.update(epoch=held["epoch"], best_top1=held["best_metric"], best_epoch=held["best_epoch"])
    return status


class RunFolder:
    """One run folder; ``lock()`` it before writing anything into it."""

    def __init__(self, path: str):
        self.path = path
        self._lock_file = None
        self.status: Dict[str, Any] = {}

    # ------------------------------------------------------------------ lock
    def lock(self, command: str) -> None:
        """Hold ``run.lock`` until :meth:`release` or process exit; ConfigError naming the holder if taken."""
        path = os.path.join(self.path, LOCK_NAME)
        try:
            os.makedirs(self.path, exist_ok=True)
            f = open(path, "a+")
        except OSError as err:
            raise FileWriteError(path, err) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"run folder {self.path} is in use by {holder}. Wait for that run to end (or stop it), "
                              f"or choose another --experiment") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} ({command})\n")
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ overwrite protection
    def existing_run_files(self):
        return [n for n in RUN_FILES if os.path.exists(os.path.join(self.path, n))]

    def fresh_start_problem(self) -> Optional[str]:
        """Why a run may not start from epoch 0 here without ``--overwrite`` (the folder holds one), or None."""
        found = self.existing_run_files()
        if not found:
            return None
        return (f"run folder {self.path} already holds a run ({', '.join(found)}). Continue it with --resume auto, "
                f"choose another --experiment, or pass --overwrite true to delete it and start again")

    def check_fresh_start(self, overwrite: bool) -> None:
        """Before a run that starts from epoch 0: refuse a folder holding a run unless ``overwrite``,
        in which case its previous outputs are removed."""
        found = self.existing_run_files()
        if not found:
            return
        if not overwrite:
            raise ConfigError(self.fresh_start_problem())
        kept_epochs = [f for f in os.listdir(self.path) if f.startswith("checkpoint-") and f.endswith(".pth.tar")]
        for name in _OUTPUTS + tuple(kept_epochs):  # checkpoint-<epoch>.pth.tar: checkpoint_hist
            p = os.path.join(self.path, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)

    # ------------------------------------------------------------------ status.json
    def write_status(self, **fields) -> None:
        """Update ``status.json`` with ``fields`` (atomically: a reader sees the old or the new file)."""
        self.status.update(fields)
        self.status.update(pid=os.getpid(),
                           updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        atomic_write(os.path.join(self.path, STATUS_NAME), json.dumps(self.status, indent=1) + "\n")


@dataclasses.dataclass
class RunState:
    """What a run folder says about its run."""

    state: str  # pending | running | finished | interrupted | failed | diverged
    epochs_done: int = 0
    total_epochs: Optional[int] = None
    best_top1: Optional[float] = None
    best_epoch: Optional[int] = None


def read_top1(run_dir: str) -> Dict[int, float]:
    """``{epoch: eval_top1}`` from a run's summary.csv (a replayed epoch keeps its last row)."""
    rows: Dict[int, float] = {}
    for row in read_summary(os.path.join(run_dir, "summary.csv")):
        try:
            rows[int(float(row["epoch"]))] = float(row["eval_top1"])
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def run_state(run_dir: str) -> RunState:
    """State of one run folder: ``status.json`` when train.py wrote one, else derived from its files."""
    summary = read_top1(run_dir)
    best_epoch = max(summary, key=lambda e: (summary[e], -e)) if summary else None
    st = RunState("pending", epochs_done=(max(summary) + 1) if summary else 0,
                  best_top1=summary.get(best_epoch) if summary else None, best_epoch=best_epoch)
    s = read_status(run_dir)
    if s is not None:
        st.state = s.get("state", st.state)
        st.epochs_done = int(s.get("epoch", -1)) + 1
        st.total_epochs = s.get("total_epochs")
        st.best_top1 = s.get("best_top1", st.best_top1)
        st.best_epoch = s.get("best_epoch", st.best_epoch)
        if st.state == "running" and not is_running(run_dir):
            st.state = "interrupted"  # killed without a chance to say so
        return st
    args_path = os.path.join(run_dir, "args.yaml")
    if os.path.isfile(args_path):
        with open(args_path) as f:
            st.total_epochs = ((yaml.safe_load(f) or {}).get("run_info") or {}).get("total_epochs")
    if is_running(run_dir):
        st.state = "running"
    elif st.total_epochs is not None and st.epochs_done >= st.total_epochs:
        st.state = "finished"
    elif summary or os.path.isfile(os.path.join(run_dir, "last.pth.tar")):
        st.state = "interrupted"
    return st
