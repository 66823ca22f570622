"""One run across two hosts: two network namespaces joined by a veth pair, torchrun's c10d rendezvous, gloo.

Needs root (``ip netns``); marked ``needs_netns`` and skipped otherwise, with the reason. Checks: the two-host
run equals the one-host two-process run; a worker of host B killed mid-epoch is restarted by torchrun and the
finished run equals the uninterrupted one; a worker that cannot reach rank 0's store says so within seconds
and gives up after ``--dist-timeout``.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.test_sweep import ROOT, tiny_config
from utils.training.checkpoint import read_training_state
from utils.training.logger import read_summary

HOSTS = {"a": "10.231.0.1", "b": "10.231.0.2"}
RDZV = f"{HOSTS['a']}:29400"
TIMING = ("img_per_s", "epoch_seconds")


def _why_skip():
    if os.environ.get("MULTINODE_TEST") == "0":
        return "MULTINODE_TEST=0"
    if shutil.which("ip") is None:
        return "needs iproute2's ip (apt-get install iproute2) to build two hosts from network namespaces"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (two hosts on one machine)"
    return None


pytestmark = [pytest.mark.needs_netns, pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))]


@pytest.fixture(scope="module")
def hosts():
    """Two namespaces ``<tag>a``/``<tag>b`` with a veth pair (10.231.0.1/2); yields {host: namespace}."""
    tag = f"mn{os.getpid() % 100000}"
    ns = {h: f"{tag}{h}" for h in HOSTS}
    sh = [f"ip netns add {ns['a']}", f"ip netns add {ns['b']}",
          f"ip link add {tag}va type veth peer name {tag}vb",
          f"ip link set {tag}va netns {ns['a']}", f"ip link set {tag}vb netns {ns['b']}"]
    for h, addr in HOSTS.items():
        sh += [f"ip -n {ns[h]} addr add {addr}/24 dev {tag}v{h}", f"ip -n {ns[h]} link set {tag}v{h} up",
               f"ip -n {ns[h]} link set lo up"]
    try:
        for cmd in sh:
            r = subprocess.run(cmd.split(), capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"network namespaces unavailable here: `{cmd}`: {r.stderr.strip()}")
        yield {h: (ns[h], f"{tag}v{h}") for h in HOSTS}
    finally:
        for h in HOSTS:
            subprocess.run(["ip", "netns", "delete", ns[h]], capture_output=True)


KILLER = """import os, signal, sys

from torch.optim.optimizer import register_optimizer_step_post_hook

# rank 1 (host b) dies at its 6th update (epoch 1, step 2 of 4), in the first attempt only
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    steps = []

    def die(opt, args, kwargs):
        steps.append(1)
        if len(steps) == 6:
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(die)
import train

sys.exit(train.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("multinode")
    cfg = tiny_config(str(d), "mn", "model_kwargs: {embed_dims: 16, num_heads: 1}\nbatch_size: 8\n"
                                    "warmup_epochs: 0\nplot: false\ntensorboard: false\n")
    killer = d / "train_killed.py"
    killer.write_text(KILLER)
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    return d, cfg, str(killer), env


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def on_hosts(hosts, env, log_dir, commands, timeout=300):
    """``{host: command}`` run at once, each in its namespace; returns ``{host: (exit code, output)}``."""
    procs, logs = {}, {}
    for node, cmd in commands.items():
        ns, ifname = hosts[node]
        logs[node] = open(os.path.join(log_dir, f"{node}-{time.time_ns()}.log"), "w+")  # a pipe could fill up
        procs[node] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], cwd=ROOT,
                                       env=dict(env, GLOO_SOCKET_IFNAME=ifname), stdout=logs[node],
                                       stderr=subprocess.STDOUT)
    out, t0 = {}, time.time()
    try:
        for node, p in procs.items():
            code = p.wait(max(1, timeout - (time.time() - t0)))
            logs[node].seek(0)
            out[node] = (code, logs[node].read())
    finally:
        for node, p in procs.items():
            p.kill()
            logs[node].close()
    return out


def two_hosts(hosts, env, log_dir, script, train_args, run_id, restarts=0):
    """torchrun on both hosts as docs/training.md says; returns ``{host: (exit code, output)}``."""
    return on_hosts(hosts, env, log_dir, {node: torchrun(
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", RDZV,
        "--rdzv-id", run_id, *(["--rdzv-conf", "is_host=1"] if node == "a" else []), "--local-addr", HOSTS[node],
        "--max-restarts", str(restarts), script, *train_args) for node in hosts})


def same_run(run_a, run_b):
    """Same summary.csv (timings aside) and the same best.pth.tar weights."""
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in read_summary(os.path.join(d, "summary.csv"))]
            for d in (run_a, run_b)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    a, b = (read_training_state(os.path.join(d, "best.pth.tar")) for d in (run_a, run_b))
    assert a["epoch"] == b["epoch"]
    for k, w in a["state_dict"].items():
        assert torch.equal(w, b["state_dict"][k]), k


@pytest.fixture(scope="module")
def one_host(setup):
    d, cfg, _, env = setup
    r = subprocess.run(torchrun("--standalone", "--nproc-per-node", "2", "train.py", "-c", cfg, "--output", str(d),
                                "--experiment", "one"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return str(d / "one")


def test_two_hosts_equal_one_host(hosts, setup, one_host):
    d, cfg, _, env = setup
    out = two_hosts(hosts, env, str(d), "train.py", ["-c", cfg, "--output", str(d), "--experiment", "two"], "equal")
    assert out["a"][0] == 0 and out["b"][0] == 0, out["a"][1][-3000:] + out["b"][1][-3000:]
    assert "2 process(es)" in out["a"][1]
    same_run(one_host, str(d / "two"))


def test_a_killed_worker_restarts_and_the_run_equals_an_uninterrupted_one(hosts, setup, one_host):
    d, cfg, killer, env = setup
    out = two_hosts(hosts, env, str(d), killer, ["-c", cfg, "--output", str(d), "--experiment", "killed"],
                    "killed", restarts=2)
    log = out["a"][1] + out["b"][1]
    assert out["a"][0] == 0 and out["b"][0] == 0, log[-6000:]
    assert "torchrun restarted the workers: continuing from" in log, log[-4000:]
    assert "killed/last.pth.tar" in log and "resumed from" in log
    same_run(one_host, str(d / "killed"))


def test_an_unreachable_rank0_is_named_within_seconds_and_times_out(hosts, setup):
    """No --local-addr: rank 0's agent gives its host name as the store's address, which leads elsewhere
    (here to a loopback address) from the other host: both say what they wait for and give up."""
    d, cfg, _, env = setup
    t0 = time.time()
    out = on_hosts(hosts, env, str(d), {node: torchrun(
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", RDZV, "--rdzv-id",
        "lost", *(["--rdzv-conf", "is_host=1"] if node == "a" else []),
        "train.py", "-c", cfg, "--output", str(d), "--experiment", "lost", "--dist-timeout", "20") for node in hosts},
        timeout=240)
    took = time.time() - t0
    log = out["a"][1] + out["b"][1]
    assert out["a"][0] != 0 and out["b"][0] != 0 and took < 200, log[-5000:]
    assert "still connecting to the run's other processes through rank 0's store at" in log, log[-5000:]
    assert "(MASTER_ADDR:MASTER_PORT, set by torchrun: node 0's --local-addr, else its host name)" in log
    assert "could not connect to the run's other processes within --dist-timeout 20 s" in log
    assert "--local-addr <this node's address" in log and "GLOO_SOCKET_IFNAME" in log
