"""The SLURM launcher against a real one-node SLURM (slurmctld + slurmd + munge) started by this test.

Needs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``) and root (the daemons run
as root with a private configuration in a temporary folder, on free ports, so an existing cluster
configuration is not touched). Marked ``needs_slurm``; skipped otherwise (the reason names what is missing),
or with ``SWEEP_SLURM_TEST=0``. Run it alone with ``python -m pytest -q tests/test_slurm.py`` (or
``-m needs_slurm``).

It submits a two-run sweep as one array job; once each run has written its first checkpoint, it preempts
one task with ``scontrol requeue`` and sends the other the time-out warning submitit asks for (USR2), so
that it checkpoints and requeues itself; both must continue from ``last.pth.tar`` and finish.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.test_sweep import ROOT, summary_epochs, tiny_config, wait_for
from utils.tools.sweep import load_manifest
from utils.training.run_folder import run_state

BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel", "munged", "munge",
            "unmunge")


def _why_skip():
    """Why this machine cannot run a real SLURM (None when it can)."""
    if os.environ.get("SWEEP_SLURM_TEST") == "0":
        return "SWEEP_SLURM_TEST=0"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"needs a real SLURM: {', '.join(missing)} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "needs root to start slurmctld and slurmd"
    return None


pytestmark = [pytest.mark.needs_slurm, pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))]


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _munge_works():
    r = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    return "STATUS:" in r.stdout and "Success" in r.stdout


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private one-node SLURM; yields the environment for sbatch/squeue/scontrol; stops what it started."""
    d = tmp_path_factory.mktemp("slurm")
    started = []
    if not _munge_works():
        if not os.path.isfile("/etc/munge/munge.key"):
            subprocess.run(["mungekey", "-c"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
            os.chmod("/etc/munge/munge.key", 0o400)
        os.makedirs("/run/munge", exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        r = subprocess.run(["munged", "--force"], capture_output=True, text=True)
        assert r.returncode == 0, f"munged did not start: {r.stderr}"
        wait_for(_munge_works, 20, "munged")
        started.append(int(open("/run/munge/munged.pid").read()))
    host = socket.gethostname()
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=sweeptest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
MinJobAge=3600
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = [subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(d / f"{daemon}.err", "w")) for daemon in ("slurmctld", "slurmd")]
    try:
        def node_idle():
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return r.stdout.strip() == "idle"
        wait_for(node_idle, 60, "the SLURM node to be idle")
        yield env
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for pid in started:
            os.kill(pid, signal.SIGTERM)


def _job_state(env, job_id):
    r = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


def test_sweep_on_slurm_with_a_preempted_job(slurm, tmp_path):
    cfg_a = tiny_config(str(tmp_path), "sa",
                        "model_kwargs: {embed_dims: 16, num_heads: 1}\nepochs: 3\nmax_train_batches: 10\n")
    cfg_b = tiny_config(str(tmp_path), "sb",
                        "model_kwargs: {embed_dims: 16, num_heads: 1}\nepochs: 3\nmax_train_batches: 10\n")
    out = str(tmp_path / "runs")
    r = subprocess.run([sys.executable, "-m", "utils.tools.sweep", cfg_a, cfg_b, "--launcher", "slurm", "--output", out,
                        "--cpus-per-gpu", "1", "--timeout-min", "30", "--mem-gb", "2"],
                       cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = {name: v["job_id"] for name, v in load_manifest(out)["runs"].items()}
    assert set(jobs) == {"sa_s0", "sb_s0"} and jobs["sa_s0"].split("_")[0] == jobs["sb_s0"].split("_")[0]

    run_a = os.path.join(out, "sa_s0")
    run_b = os.path.join(out, "sb_s0")
    wait_for(lambda: os.path.isfile(os.path.join(run_a, "last.pth.tar")), 300, "sa_s0's first checkpoint")
    subprocess.run(["scontrol", "requeue", jobs["sa_s0"]], env=slurm, check=True)  # preemption by the scheduler
    wait_for(lambda: os.path.isfile(os.path.join(run_b, "last.pth.tar")), 300, "sb_s0's first checkpoint")
    # the signal submitit asks SLURM to send before the time limit: the task checkpoints and requeues itself
    subprocess.run(["scancel", "--signal=USR2", jobs["sb_s0"]], env=slurm, check=True)
    for name in ("sa_s0", "sb_s0"):
        wait_for(lambda name=name: _job_state(slurm, jobs[name])[1] >= 1, 120, f"the requeue of {name}")
        assert run_state(os.path.join(out, name)).state != "finished", f"{name} finished before it was stopped"
    # SLURM holds a requeued job for about 2 minutes (reason BeginTime). The one the scheduler requeued may
    # start at once; the self-requeued one keeps the hold (its old step may still be tearing down).
    wait_for(lambda: _job_state(slurm, jobs["sa_s0"])[0] == "PENDING", 60, "sa_s0 to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={jobs['sa_s0']}", "StartTime=now"], env=slurm, check=True)

    status = subprocess.run([sys.executable, "-m", "utils.tools.sweep", "--status", out], cwd=ROOT, env=slurm,
                            capture_output=True, text=True, timeout=120).stdout
    assert jobs["sa_s0"] in status and jobs["sb_s0"] in status

    wait_for(lambda: run_state(run_a).state == "finished" and run_state(run_b).state == "finished",
             600, "both runs to finish")
    for name, run_dir in (("sa_s0", run_a), ("sb_s0", run_b)):
        assert sorted(set(summary_epochs(run_dir))) == [0, 1, 2]
        log = "".join(open(os.path.join(dp, f)).read() for dp, _, fs in os.walk(os.path.join(out, "slurm"))
                      for f in fs if "log" in f and jobs[name] in f)
        assert "resumed from" in log and "last.pth.tar" in log, log[-3000:]
    assert "checkpoint" in log.lower() and "requeu" in log.lower()  # sb_s0 went through TrainJob.checkpoint
    # the sweep again: nothing to submit
    r = subprocess.run([sys.executable, "-m", "utils.tools.sweep", cfg_a, cfg_b, "--launcher", "slurm",
                        "--output", out],
                       cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "nothing to start" in r.stdout, r.stdout + r.stderr
