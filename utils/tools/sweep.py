"""Sweeps: one training run per (config, seed), on this machine or on a SLURM cluster.

    python -m utils.tools.sweep A.yaml B.yaml --seeds 0 1 2 --output runs/table4 -- --epochs 100
    python -m utils.tools.sweep cifar10-100/ablations/*.yaml --seeds 0 1 2 --launcher slurm \\
        --partition gpu --gpus-per-run 1 --timeout-min 1440 --output runs/table4
    python -m utils.tools.sweep --status runs/table4

Each run is ``train.py -c CONFIG --seed S --output DIR --experiment <config stem>_s<S> --resume auto
[overrides]``, so its folder is the usual run folder ``DIR/<stem>_s<S>/`` and starting a run again
continues it from ``last.pth.tar``. Running the same sweep again skips finished runs and continues the
others. ``DIR/sweep.json`` (the manifest) records configs, seeds, overrides, commands and SLURM job ids.

Launchers:

* ``local``: one run after another, or ``--parallel K`` at once with the CPU threads (the usable cores, or
  ``OMP_NUM_THREADS`` if set) split between them (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of each run) and,
  with ``--gpus-per-run N``, N GPUs each (``CUDA_VISIBLE_DEVICES``, ``torchrun`` for N > 1).
* ``slurm``: one array job through submitit; each task runs one training run (``torchrun`` inside the job
  for N > 1 GPUs). On time-out or preemption submitit calls :meth:`TrainJob.checkpoint`, which stops
  train.py (it saves its state on SIGTERM) and requeues the same run, which continues from
  ``last.pth.tar``; a job requeued by the scheduler itself restarts the same command with the same effect.
  The request is checked against the partition's nodes (``sinfo``) before submission; ``--dry-run`` prints
  the ``#SBATCH`` options without needing SLURM on this machine (:mod:`utils.tools.slurm`).
  ``--nodes-per-run N`` spreads each run over N nodes (``--gpus-per-run`` GPUs on each): one task per node,
  each starting torchrun's agent with the c10d rendezvous on the job's first node; torchrun restarts failed
  workers (train.py continues from the last checkpoint) and a requeued job continues the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import submitit

from utils.config.cli import (Parser, any_int, existing_folder, machine_count, non_negative_int, positive_float,
                              positive_int, writable_folder)
from utils.tools.slurm import (HOPELESS_REASONS, SlurmRequestError, SlurmResources, check_request, job_states,
                               partition_nodes, rendezvous_endpoint, sbatch_preview)
from utils.tools.sweep_runs import (MANIFEST, ROOT, TRAIN_PY, Run, RunState, SweepError, claim_runs,  # noqa: F401
                                    load_manifest, manifest_lock, plan, planned_epochs, read_top1, record_runs,
                                    run_state, save_manifest)
from utils.training.threads import usable_cpus

STOP_GRACE_S = 60  # how long train.py may take to save its checkpoint after SIGTERM


# ----------------------------------------------------------------------------------------------
# local launcher
def thread_env(threads: int, gpus: Optional[Sequence[int]] = None) -> Dict[str, str]:
    """Environment of one child: its share of CPU threads and, if given, its GPUs."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return env


def cpu_budget() -> int:
    """CPU threads a sweep may use on this machine: ``OMP_NUM_THREADS`` if set, else the usable cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cpus()


def run_local(runs: Sequence[Run], parallel: int = 1, gpus_per_run: int = 0,
              python: str = sys.executable) -> Dict[str, int]:
    """Run ``runs`` on this machine, ``parallel`` at a time; returns ``{run name: exit code}``.

    Output of each run goes to ``DIR/logs/<run>.log``. A slot keeps its GPUs for all the runs it takes.
    """
    parallel = max(1, min(parallel, len(runs))) if runs else 1
    threads = max(1, cpu_budget() // parallel)
    slots = list(range(parallel))
    lock = threading.Lock()
    codes: Dict[str, int] = {}

    def one(run: Run) -> None:
        with lock:
            slot = slots.pop()
        try:
            gpus = list(range(slot * gpus_per_run, (slot + 1) * gpus_per_run)) if gpus_per_run else None
            log = os.path.join(run.output, "logs", f"{run.name}.log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            print(f"[sweep] start {run.name}  (log {log})", flush=True)
            with open(log, "a") as f:
                codes[run.name] = subprocess.call(run.command(gpus_per_run, python), cwd=ROOT,
                                                  env=thread_env(threads, gpus), stdout=f, stderr=subprocess.STDOUT)
            st = run_state(run.run_dir)
            print(f"[sweep] {run.name}: exit {codes[run.name]}, {st.state}, epochs {st.epochs_done}/"
                  f"{st.total_epochs if st.total_epochs is not None else '?'}", flush=True)
        finally:
            with lock:
                slots.append(slot)

    with ThreadPoolExecutor(parallel) as pool:
        for fut in [pool.submit(one, r) for r in runs]:
            fut.result()
    return codes


# ----------------------------------------------------------------------------------------------
# SLURM launcher (submitit)
class TrainJob:
    """One training run as a submitit job; checkpointable, so time-outs and preemptions requeue it."""

    def __init__(self, run: Run, gpus_per_run: int = 0, cpus: int = 1, python: str = sys.executable, nodes: int = 1):
        self.run, self.gpus_per_run, self.cpus, self.python, self.nodes = run, gpus_per_run, cpus, python, nodes
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> dict:
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.cpus)  # what the job was given
        threads = max(1, cpus // max(1, self.gpus_per_run))
        if self.nodes > 1:  # this task is one node of the run; the rendezvous is on the job's first node
            env = submitit.JobEnvironment()
            cmd = self.run.command(self.gpus_per_run, self.python, self.nodes,
                                   rendezvous_endpoint(env.hostnames, env.raw_job_id), env.raw_job_id)
        else:
            cmd = self.run.command(self.gpus_per_run, self.python)
        print("[sweep] " + " ".join(cmd), flush=True)
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=thread_env(threads))
        while self._proc.poll() is None:  # not wait(): checkpoint() must be able to reap it from a signal handler
            time.sleep(1.0)
        code = self._proc.returncode
        st = run_state(self.run.run_dir)
        if code < 0 or st.state == "interrupted":
            raise RuntimeError(f"{self.run.name}: train.py stopped by signal {-code if code < 0 else code} after epoch "
                               f"{st.epochs_done}/{st.total_epochs} (preemption or time-out); a requeued job "
                               "continues from last.pth.tar")
        if code != 0:
            raise RuntimeError(f"{self.run.name}: train.py exited with code {code} ({st.state}, epochs "
                               f"{st.epochs_done}/{st.total_epochs}); its output is in this job's log")
        return dataclasses.asdict(st)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on time-out/preemption: stop train.py (it saves on SIGTERM), requeue this run."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        return submitit.helpers.DelayedSubmission(TrainJob(self.run, self.gpus_per_run, self.cpus, self.python,
                                                           self.nodes))


def make_executor(folder: str, resources: SlurmResources, cluster: str = "slurm"):
    """A submitit executor writing its scripts and logs to ``folder``; ``cluster="local"`` runs the same
    jobs as local processes (tests)."""
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    ex.update_parameters(**resources.executor_parameters())
    return ex


def submit_slurm(runs: Sequence[Run], resources: SlurmResources, cluster: str = "slurm", python: str = sys.executable):
    """Submit ``runs`` as one array job; returns the submitit jobs (``job.job_id`` is ``ARRAY_TASK``)."""
    if cluster == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise SweepError(f"{' and '.join(missing)} not found: SLURM's client tools are not installed on this "
                             "machine (or not on PATH). Submit from a cluster's login node; here, --dry-run previews "
                             "the job and --launcher local runs the sweep on this machine")
    folder = os.path.join(runs[0].output, "slurm", "%j")
    ex = make_executor(folder, resources, cluster)
    with ex.batch():
        jobs = [ex.submit(TrainJob(r, resources.gpus_per_run, resources.cpus_per_task, python,
                                   resources.nodes_per_run)) for r in runs]
    return jobs


# ----------------------------------------------------------------------------------------------
# status
def status_rows(output: str) -> List[dict]:
    """One row per run of the sweep in ``output`` (manifest runs, then any other run folder)."""
    m = load_manifest(output)
    names = list(m.get("runs", {}))
    if os.path.isdir(output):
        names += sorted(d for d in os.listdir(output) if d not in names and (
            os.path.isfile(os.path.join(output, d, "args.yaml"))
            or os.path.isfile(os.path.join(output, d, "status.json"))))
    job_ids = {n: m["runs"][n].get("job_id") for n in names if n in m.get("runs", {})}
    queue = job_states([j for j in job_ids.values() if j])
    rows = []
    for n in names:
        st = run_state(os.path.join(output, n))
        job = job_ids.get(n)
        slurm = queue.get(job)
        if st.state in ("pending", "interrupted") and slurm and slurm.state in ("PENDING", "RUNNING"):
            st.state = "queued" if slurm.state == "PENDING" else "running"
        if st.total_epochs is None and n in m.get("runs", {}):
            try:
                st.total_epochs = planned_epochs(m["runs"][n]["config"], m["runs"][n]["overrides"])
            except SweepError:
                pass
        rows.append(dict(run=n, job_id=job, slurm=slurm.describe() if slurm else "",
                         slurm_reason=slurm.reason if slurm and slurm.state == "PENDING" else "",
                         **dataclasses.asdict(st)))
    return rows


def format_status(rows: Sequence[dict]) -> str:
    lines = [f"{'run':44s} {'state':12s} {'epochs':>9s} {'best top-1':>16s}  job"]
    for r in rows:
        total = r["total_epochs"] if r["total_epochs"] is not None else "?"
        best = f"{r['best_top1']:.2f} (ep {r['best_epoch']})" if r["best_top1"] is not None else "-"
        job = (r["job_id"] or "") + (f" {r['slurm']}" if r["slurm"] else "")
        epochs = str(r['epochs_done']) + '/' + str(total)
        lines.append(f"{r['run']:44s} {r['state']:12s} {epochs:>9s} {best:>16s}  {job}")
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no runs")
    stuck: Dict[str, List[str]] = {}
    for r in rows:
        if r.get("slurm_reason") in HOPELESS_REASONS:
            stuck.setdefault(r["slurm_reason"], []).append(r["job_id"])
    for reason, jobs in sorted(stuck.items()):
        lines.append(f"pending ({reason}) will not start as submitted: {HOPELESS_REASONS[reason]}; cancel "
                     f"(scancel {' '.join(jobs)}) and submit the sweep again with the request changed")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# command line
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m utils.tools.sweep", description=__doc__.split("\n\n")[0],
               epilog="Arguments after `--` go to every train.py call (e.g. -- --epochs 1).")
    p.add_argument("configs", nargs="*", help="training configs (YAML), one or more (also as -c)")
    p.add_argument("-c", "--config", dest="more_configs", action="append", default=[], metavar="CONFIG",
                   help="a training config (YAML), as the positional CONFIGS; repeatable")
    p.add_argument("--seeds", type=any_int, nargs="+", default=[0], help="seeds, one run each (default: 0)")
    p.add_argument("-o", "--output", default=None, type=writable_folder,
                   help="sweep folder: DIR/<config stem>_s<seed>/ per run")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_bool("--dry-run", help="print the plan (runs, commands, resources); start nothing")
    p.add_argument("--status", metavar="DIR", default=None, type=existing_folder,
                   help="print the state of every run in DIR and exit")
    g = p.add_argument_group("local launcher")
    g.add_argument("--parallel", type=machine_count(per_cpu=2, floor=4, what="runs"), default=1,
                   help="runs at once (CPU threads are split between them)")
    g = p.add_argument_group("both launchers")
    g.add_argument("--gpus-per-run", type=non_negative_int, default=0,
                   help="GPUs per run, per node with --nodes-per-run (torchrun when > 1)")
    g = p.add_argument_group("slurm launcher")
    g.add_argument("--nodes-per-run", type=positive_int, default=1,
                   help="nodes per run: one task per node, torchrun's c10d rendezvous on the job's first node")
    g.add_argument("--partition", default=None)
    g.add_argument("--cpus-per-gpu", type=positive_int, default=8, help="CPUs per GPU (per run without GPU)")
    g.add_argument("--timeout-min", type=positive_int, default=24 * 60, help="wall-time limit per job; "
                   "a run that needs longer is requeued and continues")
    g.add_argument("--mem-gb", type=positive_float, default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--array-parallelism", type=positive_int, default=256, help="array tasks running at once")
    g.add_argument("--job-name", default="sweep")
    return p


def _split_overrides(argv: Sequence[str]):
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    own, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        if args.status:
            if not os.path.isdir(args.status):
                raise SweepError(f"--status: {args.status} is not a folder")
            print(format_status(status_rows(args.status)))
            return 0
        if not args.output:
            raise SweepError("--output DIR is required: the sweep folder that holds one run folder per (config, seed)")
        if args.parallel < 1 or args.gpus_per_run < 0:
            raise SweepError("--parallel must be >= 1 and --gpus-per-run >= 0")
        if args.nodes_per_run > 1 and args.launcher != "slurm":
            raise SweepError(f"--nodes-per-run {args.nodes_per_run} needs --launcher slurm (the local launcher runs on "
                             "this machine only); for a run across machines without SLURM see docs/training.md")
        runs = plan(args.configs + args.more_configs, args.seeds, args.output, overrides)
        return _launch(args, runs)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def check_partition(resources: SlurmResources) -> None:
    """Refuse (SweepError) a request that no node of the partition can run; a note when sinfo cannot tell."""
    nodes = partition_nodes()
    if nodes is None:
        print("[sweep] sinfo not found (or it failed): the request is not checked against the partition here; "
              "it is on a machine with SLURM's tools")
        return
    try:
        check_request(resources, nodes)
    except SlurmRequestError as err:
        raise SweepError(str(err)) from None


def _launch(args, runs: List[Run]) -> int:
    output = runs[0].output
    m = load_manifest(output)
    states = {r.name: run_state(r.run_dir) for r in runs}
    queued = job_states([m["runs"][r.name]["job_id"] for r in runs
                         if m.get("runs", {}).get(r.name, {}).get("job_id")])
    todo = []
    for r in runs:
        st, job = states[r.name], m.get("runs", {}).get(r.name, {}).get("job_id")
        if st.state == "finished":
            print(f"[sweep] skip {r.name}: finished ({st.epochs_done}/{st.total_epochs} epochs, best {st.best_top1})")
        elif st.state == "running":
            print(f"[sweep] skip {r.name}: running now")
        elif job in queued:
            print(f"[sweep] skip {r.name}: SLURM job {job} is {queued[job].describe()}")
        else:
            todo.append(r)
    resources = SlurmResources(args.partition, args.gpus_per_run, args.cpus_per_gpu, args.timeout_min, args.mem_gb,
                               args.account, args.qos, args.array_parallelism, args.job_name, args.nodes_per_run)
    if args.launcher == "slurm" and todo:
        check_partition(resources)
    if args.dry_run:
        print(f"[sweep] plan: {len(runs)} runs, {len(todo)} to start, launcher {args.launcher}, output {output}")
        for r in todo:
            where = f" on each of its {args.nodes_per_run} nodes" if args.nodes_per_run > 1 else ""
            print(f"  {r.name} ({states[r.name].state}){where}: "
                  + " ".join(r.command(args.gpus_per_run, nodes=args.nodes_per_run)))
        if args.launcher == "slurm" and todo:
            print("[sweep] SLURM: one array job of %d tasks, submitit parameters %s" % (
                len(todo), json.dumps(resources.executor_parameters())))
            print(sbatch_preview(resources, len(todo), os.path.join(output, "slurm", "%j")))
        elif args.launcher == "local":
            print(f"[sweep] local: {args.parallel} at a time, {max(1, cpu_budget() // args.parallel)} "
                  f"threads each" + (f", {args.gpus_per_run} GPU(s) each" if args.gpus_per_run else ""))
        return 0
    if not todo:
        print("[sweep] nothing to start: every run is finished, running or queued")
        return 0
    if args.launcher == "local":
        todo, taken = claim_runs(todo)
        for name, holder in taken.items():
            print(f"[sweep] skip {name}: another sweep ({holder}) is running it")
        if not todo:
            print("[sweep] nothing to start: every run is finished, running or taken by another sweep")
            return 0
        record_runs(output, todo, "local", {"parallel": args.parallel, "gpus_per_run": args.gpus_per_run},
                    args.gpus_per_run)
        try:
            codes = run_local(todo, args.parallel, args.gpus_per_run)
        except KeyboardInterrupt:
            print("\n[sweep] interrupted; run the same command again to continue the unfinished runs", file=sys.stderr)
            return 130
        with manifest_lock(output):
            m = load_manifest(output)
            for name, code in codes.items():
                m["runs"][name]["last_exit_code"] = code
            save_manifest(output, m)
        failed = [n for n, c in codes.items() if c != 0]
        if failed:
            print(f"[sweep] {len(failed)} run(s) failed: {', '.join(failed)} (logs in {output}/logs/)", file=sys.stderr)
            return 1
        print(f"[sweep] done: {len(codes)} run(s) in {output}")
        return 0
    try:
        jobs = submit_slurm(todo, resources)
    except SweepError:
        raise
    except Exception as err:  # sbatch missing or refusing: say so in one line
        raise SweepError(f"SLURM submission failed: {err}") from None
    record_runs(output, todo, "slurm", {"resources": dataclasses.asdict(resources),
                                        "job_ids": [j.job_id for j in jobs]}, args.gpus_per_run, args.nodes_per_run)
    with manifest_lock(output):
        m = load_manifest(output)
        for r, j in zip(todo, jobs):
            m["runs"][r.name]["job_id"] = j.job_id
        save_manifest(output, m)
    print(f"[sweep] submitted array job {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs); "
          f"follow with: python -m utils.tools.sweep --status {output}")
    return 0


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
