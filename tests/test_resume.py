"""Killed and stopped runs resume exactly: SIGKILL mid-epoch, SIGKILL while a checkpoint is being written, and
SIGTERM / SIGUSR1 / SIGINT (a checkpoint of the position inside the epoch, then ``--resume auto``).

Each run is a real ``train.py`` process on the digits; the signal is a real one sent by the process to
itself at a chosen point (after the k-th forward pass, or half-way through writing a checkpoint).
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from utils.training.checkpoint import read_training_state, save_checkpoint
from utils.training.logger import read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("img_per_s", "epoch_seconds")
ARGS = ["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--img-size", "16", "--model-kwargs", "embed_dims=16",
        "--T", "1", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "16", "--max-train-batches", "3",
        "--max-eval-batches", "1", "--progress", "false", "--plot", "false", "--tensorboard", "false",
        "--log-interval", "2", "--model-ema", "true", "--model-ema-decay", "0.9", "--fastpath", "false"]

# Kill after the k-th neuron reset (one per train step and per eval batch, EMA eval included):
# epoch 0 = 3 train + 1 eval + 1 EMA eval = 5 resets, so k = 7 is the 2nd step of epoch 1.
KILL_AT_STEP = """
import utils.training.engine as E
_orig, _n = E._reset_net, [0]
def _reset(m):
    _orig(m)
    _n[0] += 1
    if _n[0] == {k}:
        ({send})(signal.{sig})
E._reset_net = _reset
"""
SELF, GROUP = "lambda s: os.kill(os.getpid(), s)", "lambda s: os.killpg(0, s)"
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


def _train(out, name, *extra, patch="", own_group=False):
    code = "\n".join(["import os, signal, sys", patch, "import train",
                       f"sys.exit(train.main({ARGS + ['--output', str(out), '--experiment', name] + list(extra)!r}))"])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, start_new_session=own_group)


def _rows(out, name):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_summary(os.path.join(out, name, "summary.csv"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = _train(out, "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(out, "ref")
    assert [int(x["epoch"]) for x in rows] == [0, 1, 2]
    return rows


def test_killed_runs_resume_to_identical_summary_rows(tmp_path, reference):

    # 1) SIGKILL in the middle of epoch 1: last.pth.tar holds epoch 0.
    r = _train(tmp_path, "run", patch=KILL_AT_STEP.format(k=7, sig="SIGKILL", send=SELF))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert len(_rows(tmp_path, "run")) == 1
    assert read_training_state(tmp_path / "run" / "last.pth.tar")["epoch"] == 0

    # 2) resume, then SIGKILL half-way through writing epoch 1's checkpoint (the first torch.save of this
    #    process): the previous checkpoint stays loadable; epoch 1's row (written after the checkpoint) is not there.
    r = _train(tmp_path, "run", "--resume", "auto", patch=KILL_IN_SAVE.format(k=1))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    assert read_training_state(tmp_path / "run" / "last.pth.tar")["epoch"] == 0
    assert len(_rows(tmp_path, "run")) == 1

    # 3) resume to the end: the same rows as the uninterrupted run (timing columns aside).
    r = _train(tmp_path, "run", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(tmp_path, "run") == reference
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]  # the killed save's temp file is gone


# SIGTERM in epoch 1's 2nd step (k=7): the step finishes, last.pth.tar holds the position inside the epoch.
# SIGUSR1 during epoch 0's evaluation (k=4): epoch 0 is finished and saved, the run stops before epoch 1.
# SIGINT in epoch 2's 1st step (k=11) to the whole process group, as Ctrl-C in a terminal (and a scheduler)
# signal every process: the data-loader worker ignores it and the run stops as on SIGTERM.
@pytest.mark.parametrize("sig,k,rc,where,workers", [("SIGTERM", 7, 143, "in epoch 1 after step 2", 0),
                                                    ("SIGUSR1", 4, 138, "before epoch 1", 0),
                                                    ("SIGINT", 11, 130, "in epoch 2 after step 1", 1)])
def test_stop_signals_save_a_resumable_checkpoint(tmp_path, reference, sig, k, rc, where, workers):
    group = workers > 0
    extra = ["--workers", str(workers)]
    r = _train(tmp_path, "run", *extra, patch=KILL_AT_STEP.format(k=k, sig=sig, send=GROUP if group else SELF),
               own_group=group)
    assert r.returncode == rc, r.stderr[-3000:]
    assert f"stopped by {sig} {where}" in r.stderr
    command = r.stderr.split("Continue with:")[1].split("\n")[1].strip()
    assert command.startswith("python train.py -c ") and command.endswith(
        f"--experiment run {' '.join(extra)} --resume auto") and "--model-kwargs embed_dims=16" in command
    state = read_training_state(tmp_path / "run" / "last.pth.tar")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["epoch"] == state["epoch"]
    if where.startswith("in epoch"):
        epoch, step = int(where.split()[2]), int(where.split()[-1])
        assert state["epoch"] == epoch - 1 and state["partial_epoch"]["step"] == step
    r = _train(tmp_path, "run", *extra, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(tmp_path, "run") == reference  # bitwise the uninterrupted run (timing columns aside)


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


def test_killed_plif_run_resumes_to_identical_rows_and_neuron_parameters(tmp_path):
    """PLIF's learned time constants (``w``) are in the checkpoint: a run killed mid-epoch resumes to the rows
    and the parameters of the uninterrupted run."""
    from utils.training.checkpoint import extract_state_dict

    plif = ("--model-kwargs", "embed_dims=16", "neuron=plif")
    r = _train(tmp_path, "ref", *plif)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _train(tmp_path, "run", *plif, patch=KILL_AT_STEP.format(k=7, sig="SIGKILL", send=SELF))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = _train(tmp_path, "run", *plif, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    assert _rows(tmp_path, "run") == _rows(tmp_path, "ref")
    ref, run = (extract_state_dict(torch.load(tmp_path / n / "last.pth.tar", map_location="cpu", weights_only=False))
                for n in ("ref", "run"))
    w = [k for k in ref if k.rsplit(".", 1)[-1] == "w"]
    assert len(w) == 25 and any(ref[k].item() != 0.0 for k in w)  # learned away from init_tau=2 (w=0)
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)
