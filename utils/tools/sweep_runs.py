"""A sweep's runs, their state, and its manifest (``DIR/sweep.json``): what :mod:`utils.tools.sweep` plans,
skips, claims and records, apart from how it launches them."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import List, Optional, Sequence

from utils.config import ConfigError
from utils.io.atomic import atomic_write
from utils.tools.slurm import node_command
from utils.training.preflight import parse_run_config
from utils.training.run_folder import RunState, read_top1, run_state  # noqa: F401 (re-exported)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_PY = os.path.join(ROOT, "train.py")
MANIFEST = "sweep.json"


class SweepError(ValueError):
    """A sweep the user has to fix (bad config, conflicting manifest, missing tool)."""


# ----------------------------------------------------------------------------------------------
# runs and their state
@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep."""

    config: str  # absolute path
    seed: int
    output: str  # sweep folder (absolute)
    overrides: tuple = ()

    @property
    def name(self) -> str:
        return f"{os.path.splitext(os.path.basename(self.config))[0]}_s{self.seed}"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output, self.name)

    def train_args(self) -> List[str]:
        """train.py's arguments for this run."""
        return ["-c", self.config, "--seed", str(self.seed), "--output", self.output, "--experiment", self.name,
                "--resume", "auto", *self.overrides]

    def command(self, gpus_per_run: int = 0, python: str = sys.executable, nodes: int = 1,
                endpoint: str = "<first node of SLURM_JOB_NODELIST>:<port>",
                run_id: str = "<SLURM_JOB_ID>") -> List[str]:
        """The full command line (``torchrun`` when the run uses more than one GPU); across ``nodes`` > 1, that
        of one node, meeting the others at ``endpoint``."""
        if nodes > 1:
            return node_command(python, [TRAIN_PY, *self.train_args()], nodes, gpus_per_run, endpoint, run_id)
        if gpus_per_run > 1:
            return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus_per_run),
                    TRAIN_PY, *self.train_args()]
        return [python, TRAIN_PY, *self.train_args()]


def planned_epochs(config: str, overrides: Sequence[str] = ()) -> int:
    """Epochs a run of ``config`` with ``overrides`` will train (schedule + cooldown); raises SweepError."""
    try:
        cfg = parse_run_config(["-c", config, *overrides])
    except ConfigError as err:  # named once: most config errors already name the file
        msg = str(err)
        raise SweepError(msg if config in msg or os.path.abspath(config) in msg else f"{config}: {msg}") from None
    return cfg.epochs + cfg.cooldown_epochs


def plan(configs: Sequence[str], seeds: Sequence[int], output: str, overrides: Sequence[str] = ()) -> List[Run]:
    """One :class:`Run` per (config, seed); every config is checked (with the overrides) before anything starts."""
    if not configs:
        raise SweepError("no config given: python -m utils.tools.sweep CONFIG [CONFIG ...] --seeds 0 1 --output DIR")
    output = os.path.abspath(output)
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise SweepError(f"--seeds repeats {', '.join(map(str, repeated))}: each seed is one run, so give each "
                         "seed once")
    given = [os.path.abspath(c) for c in configs]
    twice = sorted({c for c in configs if given.count(os.path.abspath(c)) > 1})
    if twice:
        raise SweepError(f"config {', '.join(twice)} is given twice: each (config, seed) is one run, so name it once")
    runs = []
    for c in configs:
        planned_epochs(c, overrides)
        runs += [Run(os.path.abspath(c), s, output, tuple(overrides)) for s in seeds]
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two configs share a file name, so their runs would share a folder: {', '.join(dupes)}; "
                         "rename one of them")
    return runs


# ----------------------------------------------------------------------------------------------
# manifest
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_manifest(output: str) -> dict:
    path = os.path.join(output, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_manifest(output: str, manifest: dict) -> None:
    """Write ``DIR/sweep.json`` atomically."""
    manifest["updated"] = _now()
    atomic_write(os.path.join(output, MANIFEST), json.dumps(manifest, indent=2))


@contextlib.contextmanager
def manifest_lock(output: str):
    """Hold ``DIR`` (flock on the folder) while reading and rewriting its manifest: two sweeps in one folder
    each add their part instead of one writing over the other's."""
    os.makedirs(output, exist_ok=True)
    fd = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def claim_runs(runs: Sequence[Run]):
    """Take ``DIR/logs/<run>.claim`` (flock, held until this process ends) for each run this sweep starts;
    returns (the runs claimed, ``{run name: holder}`` of those another sweep holds)."""
    mine, taken = [], {}
    for r in runs:
        path = os.path.join(r.output, "logs", f"{r.name}.claim")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            taken[r.name] = f.read().strip() or "another process"
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        _CLAIMS.append(f)
        mine.append(r)
    return mine, taken


_CLAIMS: list = []  # the claim files this process holds (open for its lifetime)


def record_runs(output: str, runs: Sequence[Run], launcher: str, extra: Optional[dict] = None,
                gpus_per_run: int = 0, nodes: int = 1) -> dict:
    """Add ``runs`` to the manifest; refuses a run recorded earlier with another config or overrides."""
    with manifest_lock(output):
        return _record_runs(output, runs, launcher, extra, gpus_per_run, nodes)


def _record_runs(output, runs, launcher, extra, gpus_per_run, nodes) -> dict:
    m = load_manifest(output) or {"created": _now(), "runs": {}, "submissions": []}
    for r in runs:
        old = m["runs"].get(r.name)
        if old and (old["config"] != r.config or old["overrides"] != list(r.overrides)):
            raise SweepError(f"{r.run_dir} was started with config {old['config']} and overrides "
                             f"{old['overrides'] or 'none'}; this sweep asks for {r.config} with "
                             f"{list(r.overrides) or 'no overrides'}. Use another --output, or the same overrides "
                             "to continue it.")
        m["runs"].setdefault(r.name, {"config": r.config, "seed": r.seed, "overrides": list(r.overrides)})
        m["runs"][r.name]["command"] = " ".join(r.command(gpus_per_run, nodes=nodes))
    m["configs"] = sorted({v["config"] for v in m["runs"].values()})
    m["seeds"] = sorted({v["seed"] for v in m["runs"].values()})
    m["submissions"].append({"time": _now(), "launcher": launcher, "runs": [r.name for r in runs], **(extra or {})})
    save_manifest(output, m)
    return m
