"""What the sweep asks of SLURM and what SLURM says back, without needing SLURM on this machine.

* :class:`SlurmResources`: the sweep's resource flags, as submitit parameters (public
  ``AutoExecutor.update_parameters`` names) and as the ``#SBATCH`` options they become
  (:meth:`SlurmResources.sbatch_options`, shown by ``--dry-run``; a test checks that submitit writes the same).
* :func:`partition_nodes` / :func:`check_request`: the request against the partition's nodes (``sinfo``), so
  a job that no node can run is refused at submission instead of pending forever.
* :func:`job_states`: state and pending reason of the sweep's jobs (``squeue``).
* :func:`node_command`: a run across ``nodes_per_run`` nodes: one task per node, each starting torchrun's
  agent with the c10d rendezvous on the job's first node (:func:`rendezvous_endpoint`).

``sinfo`` and ``squeue`` are optional: without them the check is skipped and no queue state is shown.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from typing import Dict, List, NamedTuple, Optional, Sequence

SIGNAL = "USR2"  # what submitit asks SLURM to send before the time limit (and what it handles)
SIGNAL_DELAY_S = 90  # seconds between that signal and the end of the job
MAX_RESTARTS = 3  # torchrun --max-restarts of a run across nodes: workers restarted after a failure
RDZV_PORT_BASE = 29400  # the rendezvous port is RDZV_PORT_BASE + job id % 1000 (two jobs sharing a node differ)
# pending reasons that mean the job will never start as it is, with what to change
HOPELESS_REASONS = {
    "PartitionConfig": "the request exceeds what the partition's nodes have (CPUs, GPUs, memory)",
    "PartitionTimeLimit": "--timeout-min is above the partition's time limit",
    "PartitionNodeLimit": "the request exceeds the partition's node limits",
    "BadConstraints": "no node matches the request",
    "ReqNodeNotAvail": "the nodes that could run it are down, drained or reserved",
}


class SlurmRequestError(ValueError):
    """A request that no node of the partition can satisfy, or a partition that does not exist."""


def mem_option(mem_gb: float) -> str:
    """``--mem`` value for ``mem_gb`` (whole GB as ``NGB``, else MB), as submitit writes it."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


@dataclasses.dataclass
class SlurmResources:
    """The resources of each array task (one training run)."""

    partition: Optional[str] = None
    gpus_per_run: int = 0  # per node
    cpus_per_gpu: int = 8
    timeout_min: int = 24 * 60
    mem_gb: Optional[float] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    array_parallelism: int = 256
    job_name: str = "sweep"
    nodes_per_run: int = 1

    @property
    def cpus_per_task(self) -> int:
        return self.cpus_per_gpu * max(1, self.gpus_per_run)

    def executor_parameters(self) -> dict:
        """Parameters for ``submitit.AutoExecutor.update_parameters`` (SLURM-only ones are prefixed)."""
        p = dict(name=self.job_name, nodes=self.nodes_per_run, tasks_per_node=1, cpus_per_task=self.cpus_per_task,
                 timeout_min=self.timeout_min, slurm_array_parallelism=self.array_parallelism,
                 slurm_signal_delay_s=SIGNAL_DELAY_S)
        if self.gpus_per_run:
            p["gpus_per_node"] = self.gpus_per_run
        if self.mem_gb:
            p["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                p[f"slurm_{key}"] = getattr(self, key)
        return p

    def sbatch_options(self, n_runs: int) -> Dict[str, str]:
        """The ``#SBATCH`` options (name -> value) that these resources ask for ``n_runs`` array tasks."""
        o = {"job-name": self.job_name, "nodes": str(self.nodes_per_run), "ntasks-per-node": "1",
             "cpus-per-task": str(self.cpus_per_task),
             "time": str(self.timeout_min), "signal": f"{SIGNAL}@{SIGNAL_DELAY_S}"}
        if n_runs > 1:
            o["array"] = f"0-{n_runs - 1}%{min(n_runs, self.array_parallelism)}"
        if self.gpus_per_run:
            o["gpus-per-node"] = str(self.gpus_per_run)
        if self.mem_gb:
            o["mem"] = mem_option(self.mem_gb)
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                o[key] = str(getattr(self, key))
        return dict(sorted(o.items()))


def sbatch_preview(resources: SlurmResources, n_runs: int, folder: str) -> str:
    """What ``--dry-run`` prints: the ``#SBATCH`` lines of the array job, and what submitit adds to them."""
    lines = ["#!/bin/bash", "# the sweep's resources (submitit writes these options into the script it submits):"]
    lines += [f"#SBATCH --{k}={v}" for k, v in resources.sbatch_options(n_runs).items()]
    lines += [f"# submitit adds its log paths (--output/--error in {folder}), --open-mode=append and --wckey,",
              f"# and runs each task as: srun --unbuffered ... python -u -m submitit.core._submit {folder}"]
    if resources.nodes_per_run > 1:
        lines += [f"# one task per node ({resources.nodes_per_run} nodes per run); each starts torchrun's agent, "
                  "the rendezvous on the job's first node (SLURM_JOB_NODELIST)"]
    return "\n".join(lines) + "\n"


def rendezvous_endpoint(hostnames: Sequence[str], job_id: str) -> str:
    """``HOST:PORT`` of a multi-node job's rendezvous: its first node, a port derived from the job id."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return f"{hostnames[0]}:{RDZV_PORT_BASE + int(digits) % 1000}"


def node_command(python: str, script_args: Sequence[str], nodes: int, gpus_per_node: int, endpoint: str,
                 run_id: str) -> List[str]:
    """The command of one node's task: torchrun's agent for ``nodes`` nodes of ``gpus_per_node`` processes
    (one on CPU), meeting at ``endpoint``; torchrun restarts failed workers up to :data:`MAX_RESTARTS` times
    (train.py then continues from the last checkpoint), each attempt on a fresh store (the store torchrun
    shares by default can hold the previous attempt's addresses)."""
    return ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", python, "-m", "torch.distributed.run", "--nnodes",
            str(nodes), "--nproc-per-node", str(max(1, gpus_per_node)), "--rdzv-backend", "c10d", "--rdzv-endpoint",
            endpoint, "--rdzv-id", run_id, "--max-restarts", str(MAX_RESTARTS), *script_args]


# ----------------------------------------------------------------------------------------------
# the partition (sinfo)
@dataclasses.dataclass(frozen=True)
class SlurmNode:
    """One node of one partition, as ``sinfo`` describes it."""

    name: str
    partition: str
    default: bool  # the cluster's default partition
    cpus: int
    mem_mb: Optional[int]
    gpus: int
    time_limit_min: Optional[int]  # the partition's limit; None = unlimited


SINFO_FORMAT = "%N|%P|%c|%m|%G|%l"


def parse_time_min(text: str) -> Optional[int]:
    """SLURM time ``[days-]hours:minutes:seconds`` (or ``minutes``) in whole minutes; None when unlimited."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if len(parts) == 1:  # minutes
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:  # minutes:seconds
        h, m, s = 0, *parts
    else:
        h, m, s = parts[-3:]
    return (int(days) if days else 0) * 1440 + h * 60 + m + (1 if s else 0)


def parse_gpus(gres: str) -> int:
    """GPUs of a node from its GRES (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a:2,gpu:b:2``, ``(null)``)."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_sinfo(text: str) -> List[SlurmNode]:
    """Nodes from ``sinfo -h -N -o '%N|%P|%c|%m|%G|%l'`` output (lines it cannot read are skipped)."""
    nodes = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, partition, cpus, mem, gres, limit = parts
        try:
            nodes.append(SlurmNode(name, partition.rstrip("*"), partition.endswith("*"), int(cpus.rstrip("+")),
                                   int(mem.rstrip("+")) if mem.rstrip("+").isdigit() else None, parse_gpus(gres),
                                   parse_time_min(limit)))
        except ValueError:
            continue
    return nodes


def partition_nodes() -> Optional[List[SlurmNode]]:
    """Every node of every partition (hidden ones too) from ``sinfo``; None when sinfo is absent, fails or
    lists no node."""
    if shutil.which("sinfo") is None:
        return None
    try:
        r = subprocess.run(["sinfo", "-h", "-a", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    nodes = parse_sinfo(r.stdout) if r.returncode == 0 else []
    return nodes or None


def check_request(resources: SlurmResources, nodes: Sequence[SlurmNode]) -> None:
    """Raise :class:`SlurmRequestError` when no node of the partition can run one task of ``resources``;
    the message names the flag that fixes it."""
    names = sorted({n.partition for n in nodes})
    if resources.partition:
        part = resources.partition
        nodes = [n for n in nodes if n.partition == part]
        if not nodes:
            raise SlurmRequestError(f"--partition {part}: sinfo lists no such partition; "
                                    f"pass one of: {', '.join(names) or 'none listed'}")
    else:
        nodes = [n for n in nodes if n.default]
        if not nodes:
            raise SlurmRequestError(f"the cluster has no default partition: pass --partition (one of: "
                                    f"{', '.join(names) or 'none listed'})")
        part = nodes[0].partition
    where = f"partition '{part}'"
    problems = []
    limits = [n.time_limit_min for n in nodes]
    if None not in limits and resources.timeout_min > max(limits):
        problems.append(f"--timeout-min {resources.timeout_min} is above the time limit of {where} "
                        f"({max(limits)} min): pass --timeout-min {max(limits)} (a run that needs longer is "
                        "requeued and continues from its checkpoint)")
    cpus, gpus = resources.cpus_per_task, resources.gpus_per_run
    mem_mb = int(resources.mem_gb * 1024) if resources.mem_gb else None
    able = [n for n in nodes
            if n.cpus >= cpus and n.gpus >= gpus and (mem_mb is None or n.mem_mb is None or n.mem_mb >= mem_mb)]
    if len(able) < resources.nodes_per_run and able:
        problems.append(f"--nodes-per-run {resources.nodes_per_run} asks {resources.nodes_per_run} nodes per run, but "
                        f"{where} has {len(able)} node(s) that can run one task of it ({cpus} CPUs, {gpus} GPUs"
                        f"{f', {resources.mem_gb:g} GB' if mem_mb else ''}): pass --nodes-per-run {len(able)}"
                        + (" (or another --partition)" if len(able) == 1 else ""))
    if able:
        if problems:
            raise SlurmRequestError("no node can run this job, it would pend forever: " + "; ".join(problems))
        return
    n_time = len(problems)
    max_gpus = max(n.gpus for n in nodes)
    if gpus > max_gpus:
        problems.append(f"--gpus-per-run {gpus} asks {gpus} GPUs per run, but the nodes of {where} have at most "
                        f"{max_gpus}: pass --gpus-per-run {max_gpus}" + (" (or another --partition)"
                                                                          if max_gpus == 0 else ""))
    with_gpus = [n for n in nodes if n.gpus >= gpus] or nodes
    max_cpus = max(n.cpus for n in with_gpus)
    if cpus > max_cpus:
        per = f" x --gpus-per-run {gpus}" if gpus > 1 else ""
        problems.append(f"--cpus-per-gpu {resources.cpus_per_gpu}{per} asks {cpus} CPUs per run, but the nodes of "
                        f"{where} have at most {max_cpus}: pass --cpus-per-gpu {max(1, max_cpus // max(1, gpus))}")
    mems = [n.mem_mb for n in with_gpus if n.mem_mb is not None]
    if mem_mb is not None and mems and mem_mb > max(mems):
        problems.append(f"--mem-gb {resources.mem_gb:g} is more than the nodes of {where} have (at most "
                        f"{max(mems) / 1024:.1f} GB): pass --mem-gb {max(mems) // 1024}")
    if len(problems) == n_time:
        listed = "; ".join(f"{n.name}: {n.cpus} CPUs, {n.gpus} GPUs, "
                           + (f"{n.mem_mb / 1024:.1f} GB" if n.mem_mb is not None else "? GB") for n in nodes[:8])
        problems.append(f"no node of {where} has {cpus} CPUs, {gpus} GPUs"
                        + (f" and {resources.mem_gb:g} GB" if mem_mb else "") + f" at once ({listed}); "
                        "lower --cpus-per-gpu, --gpus-per-run or --mem-gb")
    raise SlurmRequestError("no node can run this job, it would pend forever: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------
# the queue (squeue)
class JobState(NamedTuple):
    state: str  # PENDING, RUNNING, ...
    reason: str  # SLURM's reason (why it pends), "None" when there is none

    def describe(self) -> str:
        """``PENDING (Resources)``; ``RUNNING``."""
        return f"{self.state} ({self.reason})" if self.state == "PENDING" and self.reason not in ("", "None") \
            else self.state


def job_states(job_ids: Sequence[str]) -> Dict[str, JobState]:
    """``{job id: JobState}`` of the given jobs still known to ``squeue`` (empty without SLURM)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = JobState(parts[1], parts[2])
    return out
