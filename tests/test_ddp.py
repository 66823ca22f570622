"""torchrun with 2 CPU processes (gloo) == 1 process with the same global batch, after an optimizer step."""
import os
import subprocess
import sys

import pytest
import torch

from utils.training.checkpoint import read_training_state
from utils.training.logger import read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
ARGS = ["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--model", "tiny_spiking_test",
        "--model-kwargs", "none", "width=8", "--img-size", "16", "--T", "2", "--epochs", "1", "--warmup-epochs", "0",
        "--sched", "none", "--opt", "momentum",
        "--momentum", "0", "--lr", "0.5", "--weight-decay", "0", "--max-train-batches", "2", "--progress", "false",
        "--plot", "false", "--tensorboard", "false", "--workers", "0", "--seed", "3", "--fastpath", "false"]


def _launcher(tmp_path):
    """train.py with the tiny test model registered; the environment's PYTHONPATH finds both."""
    script = tmp_path / "train_tiny.py"
    script.write_text("import sys\n\nimport tiny_models  # noqa: F401\nimport train\n\n"
                      "sys.exit(train.main(sys.argv[1:]))\n")
    return str(script)


def test_two_process_ddp_matches_one_process_same_global_batch(tmp_path):
    script = _launcher(tmp_path)
    path = os.pathsep.join(p for p in (ROOT, TESTS, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    one = subprocess.run([sys.executable, script, *ARGS, "--batch-size", "16", "--output", str(tmp_path),
                          "--experiment", "one"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          script, *ARGS, "--batch-size", "8", "--output", str(tmp_path), "--experiment", "two"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es) = effective 16" in two.stdout + two.stderr

    a = read_training_state(tmp_path / "one" / "last.pth.tar")
    b = read_training_state(tmp_path / "two" / "last.pth.tar")
    assert a["world_size"] == 1 and b["world_size"] == 2 and a["num_updates"] == b["num_updates"] == 2
    for k, w in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], w, rtol=1e-5, atol=1e-6, msg=k)
    # the weights really moved: compare with the initial weights (same seed, same constructor)
    import timm

    from tests import tiny_models  # noqa: F401  (registers tiny_spiking_test)
    from utils.training.seeding import seed_everything

    seed_everything(3)
    init = timm.create_model("tiny_spiking_test", num_classes=10, T=2, width=8).state_dict()
    moved = [k for k in init if not torch.allclose(init[k], a["state_dict"][k], atol=1e-4)]
    assert len(moved) == len(init), set(init) - set(moved)
    ra, rb = read_summary(str(tmp_path / "one" / "summary.csv")), read_summary(str(tmp_path / "two" / "summary.csv"))
    assert float(ra[0]["train_loss"]) == pytest.approx(float(rb[0]["train_loss"]), rel=1e-5)
    # distributed evaluation covers every eval sample exactly once: same metrics as one process
    for col in ("eval_top1", "eval_top5"):
        assert ra[0][col] == rb[0][col]
    assert float(ra[0]["eval_loss"]) == pytest.approx(float(rb[0]["eval_loss"]), rel=1e-5)


FULL_DISK_ON_RANK0 = """import errno, os, sys

import tiny_models  # noqa: F401
import utils.training.checkpoint
from utils.io.atomic import FileWriteError

if os.environ["RANK"] == "0":
    def full_disk(state, path, *a, **kw):
        raise FileWriteError(str(path), OSError(errno.ENOSPC, "No space left on device"))
    utils.training.checkpoint.save_checkpoint = full_disk
import train

sys.exit(train.main(sys.argv[1:]))
"""


def test_a_checkpoint_that_rank0_cannot_write_stops_every_rank(tmp_path):
    """Two processes started without torchrun (whose agent would kill the survivors): when the disk refuses
    rank 0's last.pth.tar, rank 1 learns it at the same point and exits with the same error, instead of
    waiting at the next collective for a rank 0 that has stopped."""
    import socket

    script = tmp_path / "train_full_disk.py"
    script.write_text(FULL_DISK_ON_RANK0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join(p for p in (ROOT, TESTS, os.environ.get("PYTHONPATH")) if p)
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), *ARGS, "--batch-size", "8", "--output",
                                       str(tmp_path), "--experiment", "full", "--threads", "1"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (rc0, err0), (rc1, err1) = results
    last = str(tmp_path / "full" / "last.pth.tar")
    assert rc0 == 1 and f"could not write {last}: no space left on the device" in err0, err0[-3000:]
    assert "--resume auto" in err0
    assert rc1 == 1 and "Traceback" not in err1, err1[-3000:]
