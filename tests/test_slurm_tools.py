"""utils.tools.slurm without a SLURM: the #SBATCH options of the preview and what submitit really submits, the
request checked against the partition (sinfo), and the queue states with their pending reasons (squeue).
SLURM's tools are stood in for by small shell scripts on PATH, written by each test."""
import json
import os
import shlex

import pytest

from tests.test_sweep import tiny_config
from utils.tools import sweep
from utils.tools.slurm import (JobState, SlurmRequestError, SlurmResources, check_request, parse_gpus, parse_sinfo,
                         parse_time_min, sbatch_preview)
from utils.tools.sweep import Run


def fake_tools(monkeypatch, folder, **scripts):
    """Shell scripts named after SLURM's tools, first on PATH; returns the folder they are in."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def fake_sbatch(log):
    """An sbatch that keeps the script it is given and answers as SLURM does."""
    return f'cat "$1" >> {shlex.quote(str(log))}\necho "Submitted batch job 4242"'


def sinfo_lines(*nodes):
    """`sinfo -h -N -o '%N|%P|%c|%m|%G|%l'` output; a node is (name, partition, cpus, mem_mb, gres, limit)."""
    return "\n".join("|".join(map(str, n)) for n in nodes)


# ---------------------------------------------------------------------------------------- the script
def sbatch_lines(script):
    return {line.split("=", 1)[0][len("#SBATCH "):]: line.split("=", 1)[1] if "=" in line else True
            for line in script.splitlines() if line.startswith("#SBATCH ")}


def test_sbatch_preview_has_the_resources_asked(tmp_path):
    res = SlurmResources(partition="gpu", gpus_per_run=2, cpus_per_gpu=6, timeout_min=120, mem_gb=40,
                         account="proj", qos="high", array_parallelism=2, job_name="t4")
    script = sbatch_preview(res, 3, str(tmp_path / "slurm" / "%j"))
    for line in ("--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=12", "--time=120", "--mem=40GB",
                 "--account=proj", "--qos=high", "--array=0-2%2", "--job-name=t4", "--nodes=1",
                 "--ntasks-per-node=1", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    cpu = sbatch_preview(SlurmResources(cpus_per_gpu=4, mem_gb=1.5), 1, str(tmp_path))
    assert "--cpus-per-task=4" in cpu and "--mem=1536MB" in cpu
    assert "gpus" not in cpu and "--array" not in cpu and "--account" not in cpu


@pytest.mark.parametrize("n_runs", [1, 3])
def test_submitit_submits_the_previewed_options(tmp_path, monkeypatch, n_runs):
    """The sweep's submission (submitit's public API) sends sbatch the options the preview shows, and only
    the log, open-mode and wckey options besides (those the preview's comment names)."""
    log = tmp_path / "submitted.sh"
    fake_tools(monkeypatch, tmp_path, sbatch=fake_sbatch(log), srun="exit 0")
    res = SlurmResources(partition="gpu", gpus_per_run=2, cpus_per_gpu=3, timeout_min=60, mem_gb=1.5, qos="q",
                         account="a", array_parallelism=2, job_name="j")
    runs = [Run(f"/c/r{i}.yaml", 0, str(tmp_path / "out")) for i in range(n_runs)]
    jobs = sweep.submit_slurm(runs, res)
    assert [j.job_id for j in jobs] == (["4242"] if n_runs == 1 else [f"4242_{i}" for i in range(n_runs)])
    submitted = sbatch_lines(log.read_text())
    preview = sbatch_lines(sbatch_preview(res, n_runs, str(tmp_path / "out" / "slurm" / "%j")))
    assert {k: submitted.get(k) for k in preview} == preview
    assert set(submitted) - set(preview) == {"--output", "--error", "--open-mode", "--wckey"}


def test_submission_without_slurm_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(sweep.SweepError, match="sbatch and srun not found.*--dry-run"):
        sweep.submit_slurm([Run("/c/a.yaml", 0, str(tmp_path))], SlurmResources())


# ---------------------------------------------------------------------------------------- the partition
NODES = sinfo_lines(("n1", "debug*", 2, 7800, "(null)", "1:00:00"), ("n2", "debug*", 2, 7800, "(null)", "1:00:00"),
                    ("g1", "gpu", 16, 64000, "gpu:a100:2(S:0-1)", "2-00:00:00"),
                    ("g2", "gpu", 32, 128000, "gpu:4", "2-00:00:00"),
                    ("b1", "big", 64, 512000, "(null)", "infinite"))


def test_sinfo_output_is_read():
    nodes = {n.name: n for n in parse_sinfo(NODES + "\nsome line sinfo added\n")}
    assert set(nodes) == {"n1", "n2", "g1", "g2", "b1"}
    assert (nodes["n1"].partition, nodes["n1"].default, nodes["n1"].cpus, nodes["n1"].time_limit_min) == \
        ("debug", True, 2, 60)
    assert (nodes["g1"].gpus, nodes["g1"].mem_mb, nodes["g1"].time_limit_min) == (2, 64000, 2880)
    assert nodes["b1"].time_limit_min is None and nodes["b1"].gpus == 0
    assert parse_gpus("gpu:v100:2,gpu:a100:2,mps:100") == 4 and parse_gpus("(null)") == 0
    assert [parse_time_min(t) for t in ("30", "5:00", "1:30:00", "1-00:00:00", "UNLIMITED", "0:30:01")] == \
        [30, 5, 90, 1440, None, 31]


@pytest.mark.parametrize("kwargs,fix", [
    (dict(), "--cpus-per-gpu 2"),  # the default 8 CPUs per run on 2-CPU nodes
    (dict(cpus_per_gpu=2, timeout_min=24 * 60), "--timeout-min 60"),
    (dict(partition="gpu", gpus_per_run=8, cpus_per_gpu=1), "--gpus-per-run 4"),
    (dict(partition="gpu", gpus_per_run=2, cpus_per_gpu=20), "--cpus-per-gpu 16"),  # g1: 2 GPUs, 16 CPUs
    (dict(partition="gpu", gpus_per_run=1, cpus_per_gpu=1, mem_gb=200), "--mem-gb 125"),
    (dict(partition="debug", cpus_per_gpu=1, gpus_per_run=1, timeout_min=10), "--gpus-per-run 0"),
    (dict(partition="gpus", cpus_per_gpu=1), "pass one of: big, debug, gpu"),
    (dict(partition="debug", cpus_per_gpu=1, timeout_min=10, nodes_per_run=3), "pass --nodes-per-run 2"),
    (dict(partition="gpu", gpus_per_run=4, cpus_per_gpu=8, nodes_per_run=2), "pass --nodes-per-run 1 (or another"),
])
def test_a_request_no_node_can_run_is_refused_with_the_fix(kwargs, fix):
    with pytest.raises(SlurmRequestError) as err:
        check_request(SlurmResources(**kwargs), parse_sinfo(NODES))
    assert fix in str(err.value), str(err.value)


def test_a_request_only_split_nodes_could_run_is_refused():
    """Enough CPUs on one node, enough memory on another, but not both on one."""
    nodes = parse_sinfo(sinfo_lines(("a", "p*", 32, 4000, "(null)", "infinite"),
                                    ("b", "p*", 4, 64000, "(null)", "infinite")))
    with pytest.raises(SlurmRequestError, match="no node of partition 'p' has 16 CPUs, 0 GPUs and 32 GB at once"):
        check_request(SlurmResources(cpus_per_gpu=16, mem_gb=32), nodes)
    check_request(SlurmResources(cpus_per_gpu=16, mem_gb=3), nodes)


@pytest.mark.parametrize("kwargs", [dict(cpus_per_gpu=2, timeout_min=60),
                                    dict(partition="gpu", gpus_per_run=4, cpus_per_gpu=8, mem_gb=100),
                                    dict(partition="big", cpus_per_gpu=64, timeout_min=10 ** 6)])
def test_a_request_some_node_can_run_passes(kwargs):
    check_request(SlurmResources(**kwargs), parse_sinfo(NODES))


def test_submission_checks_the_partition_and_status_shows_pending_reasons(tmp_path, monkeypatch, capsys):
    """The sweep end to end against stand-ins for sinfo, sbatch, srun and squeue."""
    cfg = tiny_config(str(tmp_path), "t")
    log = tmp_path / "submitted.sh"
    fake_tools(monkeypatch, tmp_path, sbatch=fake_sbatch(log), srun="exit 0",
               sinfo=f"echo {shlex.quote(sinfo_lines(('n1', 'debug*', 2, 7800, '(null)', 'infinite')))}")
    out = str(tmp_path / "out")
    args = [cfg, "--seeds", "0", "1", "--launcher", "slurm", "--output", out]
    # the default 8 CPUs per run: refused before anything is submitted or written, the dry run too
    for extra in ([], ["--dry-run"]):
        assert sweep.main(args + extra) == 2
        err = capsys.readouterr().err
        assert "pend forever" in err and "asks 8 CPUs per run" in err and "pass --cpus-per-gpu 2" in err
    assert not log.exists() and not os.path.exists(out)
    assert sweep.main(args + ["--cpus-per-gpu", "2"]) == 0
    assert "submitted array job 4242 (2 runs)" in capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=2" in log.read_text()
    assert {k: v["job_id"] for k, v in json.load(open(os.path.join(out, "sweep.json")))["runs"].items()} == \
        {"t_s0": "4242_0", "t_s1": "4242_1"}
    # squeue: one task pends for good, the other waits for its turn
    fake_tools(monkeypatch, tmp_path, squeue="echo '4242_0|PENDING|PartitionConfig'\necho '4242_1|PENDING|Priority'")
    assert sweep.main(["--status", out]) == 0
    status = capsys.readouterr().out
    rows = {line.split()[0]: line for line in status.splitlines() if line.startswith("t_s")}
    assert "queued" in rows["t_s0"] and rows["t_s0"].endswith("4242_0 PENDING (PartitionConfig)")
    assert rows["t_s1"].endswith("4242_1 PENDING (Priority)")
    assert "pending (PartitionConfig) will not start as submitted" in status and "(scancel 4242_0)" in status
    assert "(Priority) will not start" not in status
    # the same sweep again submits nothing while its jobs are queued, and says why they wait
    log.unlink()
    assert sweep.main(args + ["--cpus-per-gpu", "2"]) == 0
    again = capsys.readouterr().out
    assert "skip t_s0: SLURM job 4242_0 is PENDING (PartitionConfig)" in again and not log.exists()


def test_job_state_describes_the_reason_only_while_pending():
    assert JobState("PENDING", "Resources").describe() == "PENDING (Resources)"
    assert JobState("RUNNING", "None").describe() == "RUNNING"
    assert JobState("PENDING", "None").describe() == "PENDING"


# ---------------------------------------------------------------------------------------- many nodes
def test_a_run_across_nodes_dry_run_shows_the_sbatch_lines_and_each_nodes_command(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(str(tmp_path), "t")
    fake_tools(monkeypatch, tmp_path, sinfo=f"echo {shlex.quote(NODES)}")
    out = str(tmp_path / "out")
    args = [cfg, "--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "2", "--cpus-per-gpu", "4",
            "--output", out, "--dry-run"]
    assert sweep.main(args + ["--nodes-per-run", "2"]) == 0
    shown = capsys.readouterr().out
    assert "#SBATCH --nodes=2\n" in shown and "#SBATCH --ntasks-per-node=1\n" in shown
    assert "#SBATCH --gpus-per-node=2\n" in shown and "one task per node (2 nodes per run)" in shown
    line = next(x for x in shown.splitlines() if x.startswith("  t_s0"))
    assert line.startswith("  t_s0 (pending) on each of its 2 nodes: env TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 ")
    assert ("-m torch.distributed.run --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint "
            "<first node of SLURM_JOB_NODELIST>:<port> --rdzv-id <SLURM_JOB_ID> --max-restarts 3 ") in line
    assert line.endswith("--experiment t_s0 --resume auto")
    assert not os.path.exists(out)
    # the partition has two GPU nodes: three are refused, naming the flag
    assert sweep.main(args + ["--nodes-per-run", "3"]) == 2
    assert "--nodes-per-run 3 asks 3 nodes per run" in capsys.readouterr().err
    # the local launcher runs on one machine only
    assert sweep.main([cfg, "--output", out, "--nodes-per-run", "2"]) == 2
    assert "--nodes-per-run 2 needs --launcher slurm" in capsys.readouterr().err


def test_a_run_across_nodes_is_submitted_with_one_task_per_node(tmp_path, monkeypatch):
    log = tmp_path / "submitted.sh"
    fake_tools(monkeypatch, tmp_path, sbatch=fake_sbatch(log), srun="exit 0")
    res = SlurmResources(gpus_per_run=4, cpus_per_gpu=2, nodes_per_run=3)
    sweep.submit_slurm([Run("/c/r.yaml", 0, str(tmp_path / "out"))], res)
    submitted = sbatch_lines(log.read_text())
    assert submitted["--nodes"] == "3" and submitted["--ntasks-per-node"] == "1"
    assert submitted["--gpus-per-node"] == "4" and submitted["--cpus-per-task"] == "8"
    assert {k: submitted.get(k) for k in sbatch_lines(sbatch_preview(res, 1, "x"))} == \
        sbatch_lines(sbatch_preview(res, 1, "x"))


def test_each_node_task_starts_torchrun_with_the_rendezvous_on_the_jobs_first_node(tmp_path, monkeypatch):
    """One srun task of a 2-node job, as SLURM starts it: its command comes from SLURM_JOB_NODELIST
    through submitit's JobEnvironment, and is the same on every node."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fakepython"
    fake.write_text(f'#!/bin/sh\necho "$TORCH_DISABLE_SHARE_RDZV_TCP_STORE|$*" >> {shlex.quote(str(calls))}\n')
    fake.chmod(0o755)
    run = Run(tiny_config(str(tmp_path), "t"), 0, str(tmp_path / "out"))
    for task in ("0", "1"):
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # as the script submitit submits exports it
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-node[07-08]")
        monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_PROCID", task)
        monkeypatch.setenv("SLURM_NODEID", task)
        monkeypatch.setenv("SLURM_LOCALID", "0")
        sweep.TrainJob(run, 8, 64, str(fake), nodes=2)()  # the stand-in python exits 0 at once
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    env, argv = lines[0].split("|", 1)
    assert env == "1"
    assert argv.startswith("-m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d "
                           "--rdzv-endpoint gpu-node07:29642 --rdzv-id 4242 --max-restarts 3 ")
    assert argv.endswith("--experiment t_s0 --resume auto")
