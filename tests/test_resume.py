"""Killed runs resume exactly: SIGKILL mid-epoch, and SIGKILL while a checkpoint is being written.

Each run is a real ``train.py`` process on the digits; the kill is a real SIGKILL sent by the process to
itself at a chosen point (after the k-th forward pass, or half-way through writing a checkpoint).
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import read_training_state, save_checkpoint
from utils.logger import read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("img_per_s", "epoch_seconds")
ARGS = ["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--img-size", "16", "--model-kwargs", "embed_dims=16",
        "--T", "1", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "16", "--max-train-batches", "3",
        "--max-eval-batches", "1", "--progress", "false", "--plot", "false", "--tensorboard", "false",
        "--log-interval", "2", "--model-ema", "true", "--model-ema-decay", "0.9", "--fastpath", "false"]

# Kill after the k-th neuron reset (one per train step and per eval batch, EMA eval included):
# epoch 0 = 3 train + 1 eval + 1 EMA eval = 5 resets, so k = 7 is the 2nd step of epoch 1.
KILL_AT_STEP = """
import utils.engine as E
_orig, _n = E._reset_net, [0]
def _reset(m):
    _orig(m)
    _n[0] += 1
    if _n[0] == {k}:
        os.kill(os.getpid(), signal.SIGKILL)
E._reset_net = _reset
"""
# Kill half-way through writing the k-th checkpoint (bytes already on disk in the temp file).
KILL_IN_SAVE = """
import torch
_save, _n = torch.save, [0]
def _torn_save(obj, f, *a, **kw):
    _n[0] += 1
    if _n[0] == {k}:
        import io
        buf = io.BytesIO()
        _save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **kw)
torch.save = _torn_save
"""


def _train(out, name, *extra, patch=""):
    code = "\n".join(["import os, signal, sys", f"sys.path.insert(0, {ROOT!r})", patch, "import train",
                       f"sys.exit(train.main({ARGS + ['--output', str(out), '--experiment', name] + list(extra)!r}))"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _rows(out, name):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_summary(os.path.join(out, name, "summary.csv"))]


def test_killed_runs_resume_to_identical_summary_rows(tmp_path):
    r = _train(tmp_path, "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    reference = _rows(tmp_path, "ref")
    assert [int(x["epoch"]) for x in reference] == [0, 1, 2]

    # 1) SIGKILL in the middle of epoch 1: last.pth.tar holds epoch 0.
    r = _train(tmp_path, "run", patch=KILL_AT_STEP.format(k=7))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert len(_rows(tmp_path, "run")) == 1
    assert read_training_state(tmp_path / "run" / "last.pth.tar")["epoch"] == 0

    # 2) resume, then SIGKILL half-way through writing epoch 1's checkpoint (the first torch.save of this
    #    process): the previous checkpoint stays loadable; the logged epoch-1 row is dropped on resume.
    r = _train(tmp_path, "run", "--resume", "auto", patch=KILL_IN_SAVE.format(k=1))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    assert read_training_state(tmp_path / "run" / "last.pth.tar")["epoch"] == 0
    assert len(_rows(tmp_path, "run")) == 2

    # 3) resume to the end: the same rows as the uninterrupted run (timing columns aside).
    r = _train(tmp_path, "run", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(tmp_path, "run") == reference
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]  # the killed save's temp file is gone


def test_save_checkpoint_is_atomic_in_process(tmp_path, monkeypatch):
    path = tmp_path / "last.pth.tar"
    save_checkpoint({"epoch": 0, "w": torch.ones(3)}, path)

    def boom(obj, f, *a, **kw):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 1, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    obj = torch.load(path, weights_only=True)
    assert obj["epoch"] == 0 and torch.equal(obj["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pth.tar"]  # no temp file left behind
