"""torchrun with 2 CPU processes (gloo) == 1 process with the same global batch, after an optimizer step."""
import os
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import read_training_state
from utils.logger import read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
ARGS = ["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--model", "tiny_spiking_test", "--model-kwargs", "none", "width=8",
        "--img-size", "16", "--T", "2", "--epochs", "1", "--warmup-epochs", "0", "--sched", "none", "--opt", "momentum",
        "--momentum", "0", "--lr", "0.5", "--weight-decay", "0", "--max-train-batches", "2", "--progress", "false",
        "--plot", "false", "--tensorboard", "false", "--workers", "0", "--seed", "3", "--fastpath", "false"]


def _launcher(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text("import sys\nimport tiny_models  # noqa\nimport train\nsys.exit(train.main(sys.argv[1:]))\n")
    return str(script)


def test_two_process_ddp_matches_one_process_same_global_batch(tmp_path):
    script = _launcher(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
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
    from tests import tiny_models  # noqa: F401
    from utils.engine import seed_everything

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
