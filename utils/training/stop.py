"""How a training run ends early: stop signals (SIGTERM/SIGUSR1/SIGINT end it after the current step with a
resumable checkpoint) and a loss that is no longer finite."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Dict, Optional

__all__ = ["TrainingStopped", "StopSignals", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


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
