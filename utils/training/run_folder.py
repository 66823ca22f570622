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

import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import socket
from typing import Any, Dict, Optional

import yaml

from utils.config import ConfigError
from utils.io.atomic import FileWriteError, atomic_write
from utils.training.checkpoint import checkpoint_position, copy_checkpoint
from utils.training.logger import read_summary

__all__ = ["RunFolder", "RunState", "run_state", "read_top1", "is_running", "read_status", "RUN_FILES", "LOCK_NAME",
           "STATUS_NAME"]

LOCK_NAME = "run.lock"
STATUS_NAME = "status.json"
ERROR_LOG = "error.log"
MESSAGE_LIMIT = 2000  # characters of a status.json message (a compiler's error can be hundreds of KB)
# files that mean "a run lives here" (and that --overwrite removes, with the other outputs below)
RUN_FILES = ("args.yaml", "summary.csv", "last.pth.tar", "best.pth.tar")
_OUTPUTS = RUN_FILES + ("learning_curve.png", STATUS_NAME, ERROR_LOG, "wandb_id.txt", "tensorboard")


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
        for name in os.listdir(self.path):  # temp files of a writer killed mid-write: nobody else writes here now
            if re.fullmatch(r".+\.tmp-\d+", name):
                try:
                    os.remove(os.path.join(self.path, name))
                except OSError:
                    pass

    def read_state(self) -> Optional[Dict[str, Any]]:
        """``status.json`` as written (no reconciliation with the checkpoint), or None."""
        try:
            with open(os.path.join(self.path, STATUS_NAME)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def remove_if_unused(self) -> None:
        """Remove the folder if it holds nothing but ``run.lock`` and ``status.json`` (a run refused during its
        setup, before any output): nothing to resume, nothing to keep. Call while holding the lock."""
        try:
            names = set(os.listdir(self.path))
        except OSError:
            return
        if not names <= {LOCK_NAME, STATUS_NAME, ERROR_LOG}:
            return
        try:
            for name in sorted(names - {LOCK_NAME}) + [LOCK_NAME]:
                os.remove(os.path.join(self.path, name))
            os.rmdir(self.path)
        except OSError:  # e.g. another process has just created its run.lock: its folder stays
            pass

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

    def check_resume(self, resume: str, overwrite: bool) -> None:
        """Before resuming from ``resume`` (a path given by the user): unless ``overwrite``, refuse a checkpoint of
        another folder when this one holds a run, and one that is behind this folder's ``last.pth.tar``, since
        resuming here replaces the later epochs. With ``overwrite`` this folder's run is deleted, or
        ``last.pth.tar`` becomes that checkpoint at once (so that a kill before the next epoch resumes there)."""
        last = os.path.join(self.path, "last.pth.tar")
        found = self.existing_run_files()
        if found and os.path.dirname(os.path.abspath(resume)) != os.path.abspath(self.path):
            if not overwrite:  # another run's checkpoint: continuing it here would replace this folder's run
                raise ConfigError(f"run folder {self.path} already holds a run ({', '.join(found)}); --resume {resume} "
                                  f"belongs to another one. Choose another --experiment, or pass --overwrite true to "
                                  f"delete this folder's run and continue {resume} here")
            self.check_fresh_start(overwrite=True)
            return
        if not os.path.isfile(last) or os.path.abspath(resume) == os.path.abspath(last):
            return
        held, want = checkpoint_position(last), checkpoint_position(resume)
        if held is None or want is None or _done(held) <= _done(want):
            return
        first, end = want["epoch"] + 1, held["epoch"] + (2 if held["partial_epoch"] else 1)
        lost = f"epoch {first}" if end - first == 1 else f"epochs {first}-{end - 1}"
        if not overwrite:
            raise ConfigError(
                f"--resume {resume} holds {_where(want)} but {last} holds {_where(held)}: resuming into "
                f"{self.path} would throw away {lost} (last.pth.tar and their summary.csv rows). Continue the run "
                f"with --resume auto, start from that checkpoint in a new folder with another --experiment, or pass "
                f"--overwrite true to discard {lost}")
        copy_checkpoint(resume, last)

    # ------------------------------------------------------------------ status.json
    def write_status(self, **fields) -> None:
        """Update ``status.json`` with ``fields`` (atomically: a reader sees the old or the new file). An
        ``exit_message`` longer than :data:`MESSAGE_LIMIT` characters is cut there; the whole of it goes to
        ``error.log`` in the run folder, which the cut message names."""
        message = fields.get("exit_message")
        if isinstance(message, str) and len(message) > MESSAGE_LIMIT:
            log = os.path.join(self.path, ERROR_LOG)
            atomic_write(log, message + "\n")
            fields["exit_message"] = (f"{message[:MESSAGE_LIMIT]} ... [cut at {MESSAGE_LIMIT} of {len(message)} "
                                      f"characters; the whole message is in {log}]")
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


def _done(position: Dict[str, Any]) -> tuple:
    """(epochs done, steps into the next) of a :func:`~utils.training.checkpoint.checkpoint_position`."""
    return position["epoch"] + 1, int((position["partial_epoch"] or {}).get("step", 0))


def _where(position: Dict[str, Any]) -> str:
    partial = position["partial_epoch"]
    return (f"epoch {partial['epoch']} after step {partial['step']}" if partial else f"epoch {position['epoch']}")
