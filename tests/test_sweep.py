"""utils.tools.sweep: local sweeps end to end (skip on re-run, a killed run continued), run states, the manifest,
the SLURM path through submitit's local executor and the SLURM dry run (tests/test_slurm_tools.py has the
sbatch options, the partition check and the queue states)."""
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from utils.tools import sweep
from utils.training.run_folder import is_running
from utils.tools.sweep import Run, SweepError
from utils.training.run_folder import RunState, run_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def tiny_config(folder, name, extra=""):
    """A digits config that trains in about a second per epoch (startup dominates)."""
    path = os.path.join(folder, f"{name}.yaml")
    lines = ["img_size: 8", "T: 1", "epochs: 2", "fastpath: false", "max_train_batches: 4", "max_eval_batches: 1",
             "log_interval: 100", "progress: false"]
    given = {line.split(":")[0] for line in extra.splitlines()}  # a key of ``extra`` replaces the default one
    with open(path, "w") as f:
        f.write(f"base: {ROOT}/demo/digits.yaml\n" + "".join(f"{line}\n" for line in lines
                                                               if line.split(":")[0] not in given) + extra)
    return path


# one thread per run: on a machine whose cores other processes keep busy, more threads wait on each other
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def sweep_cli(*args, timeout=600):
    return subprocess.run([PY, "-m", "utils.tools.sweep", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def summary_epochs(run_dir):
    with open(os.path.join(run_dir, "summary.csv"), newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def pids_running(*words):
    """Processes whose command line contains every one of ``words``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(any(w in part for part in cmd) for w in words):
            pids.append(int(pid))
    return pids


def wait_for(cond, timeout=180, what="condition"):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Two tiny configs x two seeds, one epoch each, two runs at a time (timed)."""
    d = tmp_path_factory.mktemp("sweep")
    a = tiny_config(str(d), "tiny_a", "model_kwargs: {embed_dims: 16, num_heads: 1}\n")
    b = tiny_config(str(d), "tiny_b",
                    "model_kwargs: {embed_dims: 16, num_heads: 1, mixers: [identity, identity, ssa]}\n")
    out = str(d / "runs")
    args = [a, b, "--seeds", "0", "1", "--parallel", "2", "--output", out, "--", "--epochs", "1"]
    t0 = time.perf_counter()
    r = sweep_cli(*args)
    wall = time.perf_counter() - t0
    print(f"\nlocal test sweep (4 runs x 1 epoch, --parallel 2): {wall:.1f} s wall")
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(out=out, args=args, configs=(a, b), wall=wall)


def test_local_sweep_runs_every_config_and_seed(local_sweep):
    out = local_sweep["out"]
    names = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)) and d.startswith("tiny"))
    assert names == ["tiny_a_s0", "tiny_a_s1", "tiny_b_s0", "tiny_b_s1"]
    for n in names:
        assert summary_epochs(os.path.join(out, n)) == [0]
        st = run_state(os.path.join(out, n))
        assert (st.state, st.epochs_done, st.total_epochs) == ("finished", 1, 1)
    m = json.load(open(os.path.join(out, "sweep.json")))
    assert m["configs"] == sorted(local_sweep["configs"]) and m["seeds"] == [0, 1]
    assert m["runs"]["tiny_b_s1"]["overrides"] == ["--epochs", "1"]
    assert all(v["last_exit_code"] == 0 for v in m["runs"].values())
    assert m["runs"]["tiny_a_s1"]["command"].endswith("--experiment tiny_a_s1 --resume auto --epochs 1")
    # each run got its own seed and half of the CPU threads
    log = open(os.path.join(out, "logs", "tiny_a_s1.log")).read()
    assert "tiny_a_s1" in log


def test_second_invocation_skips_finished_runs(local_sweep):
    out = local_sweep["out"]
    before = {n: os.path.getmtime(os.path.join(out, n, "summary.csv")) for n in ("tiny_a_s0", "tiny_b_s1")}
    r = sweep_cli(*local_sweep["args"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skip ") == 4 and "nothing to start" in r.stdout
    for n, t in before.items():
        assert os.path.getmtime(os.path.join(out, n, "summary.csv")) == t


def test_status_lists_every_run(local_sweep):
    r = sweep_cli("--status", local_sweep["out"])
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("tiny_")]
    assert len(lines) == 4 and all(" finished " in line and " 1/1 " in line for line in lines)
    assert "4 finished" in r.stdout


def test_tables_cli_on_the_sweep(local_sweep):
    out = local_sweep["out"]
    r = subprocess.run([PY, "-m", "utils.analysis.tables", "--runs", out], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["row"]: row for row in csv.DictReader(open(os.path.join(out, "results.csv")))}
    assert set(rows) == {"tiny_a", "tiny_b"}
    for name, row in rows.items():
        tops = [max(float(x["eval_top1"])
                    for x in csv.DictReader(open(os.path.join(out, f"{name}_s{s}", "summary.csv"))))
                for s in (0, 1)]
        # summary.csv rounds top-1 to 4 decimals; the table reads the exact values of status.json
        assert float(row["mean_top1"]) == pytest.approx(sum(tops) / 2, abs=1e-3)
        assert float(row["std_top1"]) == pytest.approx(abs(tops[0] - tops[1]) / 2 ** 0.5, abs=1e-3)
        assert row["n_seeds"] == "2" and row["status"] == "finished"
        assert f"{float(row['mean_top1']):.2f} ± {float(row['std_top1']):.2f}" in r.stdout


def test_killed_run_is_continued_by_the_next_invocation(tmp_path):
    cfg = tiny_config(str(tmp_path), "slow",
                      "model_kwargs: {embed_dims: 16, num_heads: 1}\nepochs: 3\nmax_train_batches: 10\n")
    out = str(tmp_path / "runs")
    run_dir = os.path.join(out, "slow_s0")
    p = subprocess.Popen([PY, "-m", "utils.tools.sweep", cfg, "--output", out], cwd=ROOT, env=ENV,
                         start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.isfile(os.path.join(run_dir, "last.pth.tar")), what="the first checkpoint")
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the whole sweep dies at once (node crash)
        p.wait()
    # the kernel releases run.lock once the killed training process (and its workers) are gone
    wait_for(lambda: not is_running(run_dir), what="the killed run to release run.lock")
    # last.pth.tar is an epoch's commit point: whichever of the later writes the kill cut off, the run state
    # counts the epoch it holds
    st = run_state(run_dir)
    assert st.state == "interrupted" and 1 <= st.epochs_done < 3, st
    assert "interrupted" in sweep_cli("--status", out).stdout
    r = sweep_cli(cfg, "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary_epochs(run_dir) == [0, 1, 2]  # one row per epoch: rows the kill cut off come from the checkpoint
    assert run_state(run_dir).state == "finished"
    log = open(os.path.join(out, "logs", "slow_s0.log")).read()
    assert "resumed from" in log and "last.pth.tar" in log


# ---------------------------------------------------------------------------------------- run states
def write_run(run_dir, epochs_done, total, tops=None):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.yaml"), "w") as f:
        f.write(f"experiment: x\nrun_info:\n  total_epochs: {total}\n")
    with open(os.path.join(run_dir, "summary.csv"), "w") as f:
        f.write("epoch,eval_top1\n" + "".join(f"{e},{(tops or [10 + e] * 99)[e]}\n" for e in range(epochs_done)))


def test_run_state_from_files(tmp_path):
    assert run_state(str(tmp_path / "none")).state == "pending"
    write_run(str(tmp_path / "a"), 2, 5, tops=[30, 40, 35])
    assert run_state(str(tmp_path / "a")) == RunState("interrupted", 2, 5, 40.0, 1)
    write_run(str(tmp_path / "b"), 5, 5)
    assert run_state(str(tmp_path / "b")).state == "finished"
    # a folder whose run.lock is held by a live process is running
    with open(tmp_path / "a" / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run_state(str(tmp_path / "a")).state == "running"
    assert run_state(str(tmp_path / "a")).state == "interrupted"


def test_run_state_prefers_status_json(tmp_path):
    write_run(str(tmp_path), 2, 5)
    status = {"state": "diverged", "epoch": 3, "total_epochs": 7, "best_top1": 50.0, "best_epoch": 2}
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert run_state(str(tmp_path)) == RunState("diverged", 4, 7, 50.0, 2)
    # "running" without a held lock = killed without a chance to say so
    (tmp_path / "status.json").write_text(json.dumps({**status, "state": "running"}))
    assert run_state(str(tmp_path)).state == "interrupted"


def test_manifest_refuses_a_run_with_other_overrides(tmp_path):
    r1 = Run("/c/a.yaml", 0, str(tmp_path), ("--epochs", "1"))
    sweep.record_runs(str(tmp_path), [r1], "local")
    sweep.record_runs(str(tmp_path), [r1], "local")  # the same run again is fine
    with pytest.raises(SweepError, match="another --output, or the same overrides"):
        sweep.record_runs(str(tmp_path), [Run("/c/a.yaml", 0, str(tmp_path), ("--epochs", "2"))], "local")


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    assert sweep.main([str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and err.count("missing.yaml") == 1, err
    (tmp_path / "dup.yaml").write_text("epochs: 1\nepochs: 2\n")
    assert sweep.main([str(tmp_path / "dup.yaml"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # the path once, before the problem
    assert err.count("dup.yaml") == 1 and "given twice (line 1 and line 2)" in err, err
    (tmp_path / "nan.yaml").write_text("lr: .nan\n")
    assert sweep.main([str(tmp_path / "nan.yaml"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # a message that does not name the file gets it in front
    assert err.startswith(f"error: {tmp_path / 'nan.yaml'}: ") and "'lr'" in err, err
    cfg = tiny_config(str(tmp_path), "t")
    assert sweep.main([cfg, "--output", str(tmp_path / "o"), "--", "--epochz", "1"]) == 2
    assert "unknown config key 'epochz'" in capsys.readouterr().err
    assert sweep.main([cfg]) == 2 and "--output DIR is required" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    twin = tiny_config(str(tmp_path / "sub"), "t")
    assert sweep.main([cfg, twin, "--output", str(tmp_path / "o")]) == 2
    assert "share a file name" in capsys.readouterr().err
    # a repeated seed or config is named as such (not as two configs sharing a file name)
    assert sweep.main([cfg, "--seeds", "0", "1", "0", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--seeds repeats 0: each seed is one run" in err and "file name" not in err, err
    assert sweep.main([cfg, cfg, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"config {cfg} is given twice" in err and "file name" not in err, err
    assert not os.path.exists(tmp_path / "o")


def test_a_second_identical_sweep_skips_the_run_the_first_is_running(tmp_path):
    """The second sweep starts while the first one's train.py is still starting (before it takes run.lock):
    it sees the first sweep's claim on the run and skips it; the healthy run is not reported failed, and
    sweep.json keeps the first sweep's record."""
    cfg = tiny_config(str(tmp_path), "t")
    out = str(tmp_path / "runs")
    claim = os.path.join(out, "logs", "t_s0.claim")
    first = subprocess.Popen([PY, "-m", "utils.tools.sweep", cfg, "--output", out], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: os.path.isfile(os.path.join(out, "sweep.json")), what="the first sweep's record")
        second = sweep_cli(cfg, "--output", out, timeout=120)
        first_out = first.communicate(timeout=600)[0]
    finally:
        first.kill()
    assert second.returncode == 0, second.stdout + second.stderr
    # the first sweep's claim, or (once its train.py has started) run.lock
    assert f"skip t_s0: another sweep (pid {first.pid} on" in second.stdout or \
        "skip t_s0: running now" in second.stdout, second.stdout
    assert "failed" not in second.stdout + second.stderr
    assert first.returncode == 0 and "failed" not in first_out, first_out
    m = json.load(open(os.path.join(out, "sweep.json")))
    assert len(m["submissions"]) == 1 and m["runs"]["t_s0"]["last_exit_code"] == 0
    assert run_state(os.path.join(out, "t_s0")).state == "finished"
    with open(claim) as f:  # released when the first sweep ended
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_claimed_by_another_sweep_is_skipped_before_its_training_starts(tmp_path):
    cfg = tiny_config(str(tmp_path), "t")
    out = tmp_path / "runs"
    (out / "logs").mkdir(parents=True)
    with open(out / "logs" / "t_s0.claim", "w") as held:  # another sweep, between its claim and train.py's lock
        held.write("pid 4242 on node7\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        r = sweep_cli(cfg, "--seeds", "0", "--output", str(out), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skip t_s0: another sweep (pid 4242 on node7) is running it" in r.stdout
    assert "nothing to start" in r.stdout and not (out / "sweep.json").exists() and not (out / "t_s0").exists()


def test_commands_and_thread_split():
    run = Run("/c/a.yaml", 3, "/out", ("--epochs", "1"))
    assert run.name == "a_s3" and run.run_dir == "/out/a_s3"
    assert run.command(0, "py") == ["py", sweep.TRAIN_PY, "-c", "/c/a.yaml", "--seed", "3", "--output", "/out",
                                    "--experiment", "a_s3", "--resume", "auto", "--epochs", "1"]
    assert run.command(4, "py")[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    env = sweep.thread_env(3, [2, 3])
    assert sweep.cpu_budget() == int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"]) == ("3", "3", "2,3")


# ---------------------------------------------------------------------------------------- SLURM
def test_slurm_dry_run_starts_nothing(tmp_path):
    """The preview works where SLURM is not installed: a failing `sinfo` first on PATH stands for one that is
    absent or broken (the request is then not checked, and the plan says so)."""
    cfg = tiny_config(str(tmp_path), "t")
    out = tmp_path / "o"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sinfo").chmod(0o755)
    env = dict(ENV, PATH=f"{bin_dir}{os.pathsep}{ENV.get('PATH', '')}")
    r = subprocess.run([PY, "-m", "utils.tools.sweep", cfg, "--seeds", "0", "1", "--launcher", "slurm", "--dry-run",
                        "--output", str(out), "--partition", "p1", "--gpus-per-run", "2", "--qos", "q", "--",
                        "--epochs", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "not checked against the partition" in r.stdout
    assert "#SBATCH --array=0-1%2" in r.stdout and "#SBATCH --partition=p1" in r.stdout
    assert "#SBATCH --qos=q" in r.stdout
    assert r.stdout.count("--nproc_per_node 2") == 2 and "--epochs 1" in r.stdout
    assert not out.exists()


def test_slurm_path_through_submitit_local_executor(tmp_path, monkeypatch, capsys):
    """The SLURM launcher's code path with submitit's local executor: submission, manifest, job ids, and a
    preemption signal (USR2) that makes the job checkpoint, requeue and continue the run from last.pth.tar."""
    cfg = tiny_config(str(tmp_path), "pre",
                      "model_kwargs: {embed_dims: 16, num_heads: 1}\nepochs: 3\nmax_train_batches: 10\n")
    out = str(tmp_path / "runs")
    jobs = []
    real_submit = sweep.submit_slurm

    def submit_local(runs, resources, cluster="slurm", python=sys.executable):
        jobs.extend(real_submit(runs, resources, "local", python))
        return jobs

    monkeypatch.setattr(sweep, "submit_slurm", submit_local)
    # the machine's own SLURM, if any, has no say: no partition check, no queue
    monkeypatch.setattr(sweep, "partition_nodes", lambda: None)
    monkeypatch.setattr(sweep, "job_states", lambda job_ids: {})
    assert sweep.main([cfg, "--launcher", "slurm", "--output", out, "--cpus-per-gpu", "1", "--timeout-min", "10"]) == 0
    assert "submitted array job" in capsys.readouterr().out
    (job,) = jobs
    m = json.load(open(os.path.join(out, "sweep.json")))
    assert m["runs"]["pre_s0"]["job_id"] == job.job_id
    assert m["submissions"][-1]["resources"]["cpus_per_gpu"] == 1
    run_dir = os.path.join(out, "pre_s0")
    wait_for(lambda: os.path.isfile(os.path.join(run_dir, "last.pth.tar")), what="the first checkpoint")
    (task,) = pids_running("submitit.core._submit", out)
    os.kill(task, signal.SIGUSR2)  # what SLURM sends to the job before a time-out or a preemption
    result = job.result()
    assert result["state"] == "finished" and result["epochs_done"] == 3
    assert sorted(set(summary_epochs(run_dir))) == [0, 1, 2]
    log = job.stdout() + (job.stderr() or "")
    assert "resumed from" in log and "requeue" in log.lower()
    # a finished run is skipped by the next invocation
    assert sweep.main([cfg, "--launcher", "slurm", "--output", out]) == 0
    assert "skip pre_s0: finished" in capsys.readouterr().out and len(jobs) == 1


# ---------------------------------------------------------------------------------------- launchers
@pytest.mark.parametrize("script,n_configs",
                         [("cifar10-100/ablations/run_all.sh", 29), ("event/ablations/run_all.sh", 8)])
def test_run_all_passes_every_config_and_extra_args(tmp_path, script, n_configs):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fakepython"
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD|$*" >> "{log}"\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", os.path.join(ROOT, script), "--seeds", "0", "1", "--", "--epochs", "3"], cwd="/",
                       env=dict(os.environ, PYTHON=str(fake), OUTPUT="/runs"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cwd, argv = log.read_text().strip().split("|", 1)
    assert cwd == ROOT and argv.startswith("-m utils.tools.sweep ")
    configs = [a for a in argv.split() if a.endswith(".yaml")]
    assert len(configs) == n_configs and all(os.path.isfile(c) for c in configs)
    assert argv.endswith("--output /runs --seeds 0 1 -- --epochs 3")
