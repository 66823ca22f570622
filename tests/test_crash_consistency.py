"""The run folder between its writes: a run killed, or refused by a full disk, after any one of an epoch's
writes (last.pth.tar, status.json, best.pth.tar, summary.csv) is reported as what last.pth.tar holds
(utils.tools.sweep's run state) and resumes to the uninterrupted run's rows and best.pth.tar; summary.csv rows
cut or deleted are restored from the checkpoint; a batch size changed mid-epoch trains each sample once.

Faults are injected in-process at ``os.replace`` (every run-folder file is written through
utils.io.atomic.atomic_write, which renames a finished temp file over the target).
"""
import errno
import os

import pytest

import train
from tests.test_run_folder import TINY
from utils.training.checkpoint import checkpoint_position, read_training_state
from utils.training.logger import read_summary
from utils.training.run_folder import read_status
from utils.training.run_folder import run_state

TIMING = ("img_per_s", "epoch_seconds")
ARGS = TINY + ["--epochs", "2", "--max-train-batches", "1"]
WRITES = ("last.pth.tar", "status.json", "best.pth.tar", "summary.csv")  # an epoch's writes, in their order

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """The process dies here: nothing after it is written (not even status.json's last word)."""


def _run(out, *extra):
    return train.main(ARGS + ["--output", str(out), "--experiment", "x", *extra])


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_summary(os.path.join(run_dir, "summary.csv"))]


def _fail_after(monkeypatch, run_dir, name, fault, epoch=0):
    """Make the run-folder write of ``name`` in ``epoch``'s commit (the first one from last.pth.tar on) fail:
    ``fault`` "kill" completes it and then kills the run (every later write is lost too); "enospc" refuses it."""
    real, seen = os.replace, {"commit": False, "dead": False, "last": 0}

    def replace(src, dst, *a, **kw):
        if os.path.dirname(os.path.abspath(dst)) != os.path.abspath(run_dir):
            return real(src, dst, *a, **kw)
        if seen["dead"]:
            raise Killed
        base = os.path.basename(dst)
        seen["last"] += base == "last.pth.tar"
        seen["commit"] |= seen["last"] > epoch
        if seen["commit"] and base == name:
            if fault == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(src, dst, *a, **kw)
            seen["dead"] = True
            raise Killed
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        assert _run(out) == 0
    finally:
        mp.undo()
    run_dir = str(out / "x")
    return {"rows": _rows(run_dir), "best_epoch": read_status(run_dir)["best_epoch"]}


def _check_resumes_to_reference(out, reference, capsys):
    run_dir = str(out / "x")
    capsys.readouterr()
    assert _run(out, "--resume", "auto") == 0
    log = "".join(capsys.readouterr())
    assert _rows(run_dir) == reference["rows"]
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["best_epoch"] == reference["best_epoch"]
    assert checkpoint_position(os.path.join(run_dir, "best.pth.tar"))["epoch"] == reference["best_epoch"]
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]
    return log


@pytest.mark.parametrize("name", WRITES)
def test_a_kill_after_any_write_is_reported_as_the_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, capsys,
                                                                                   reference, name):
    run_dir = str(tmp_path / "x")
    _fail_after(monkeypatch, run_dir, name, "kill")
    with pytest.raises(Killed):
        _run(tmp_path)
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert read_training_state(os.path.join(run_dir, "last.pth.tar"))["epoch"] == 0  # epoch 0 is committed
    st = run_state(run_dir)  # what `python -m utils.tools.sweep --status` prints
    assert (st.state, st.epochs_done, st.total_epochs) == ("interrupted", 1, 2), st
    log = _check_resumes_to_reference(tmp_path, reference, capsys)
    assert ("re-derived" in log) == (name in ("last.pth.tar", "status.json"))  # best.pth.tar was not copied yet
    assert ("restored them" in log) == (name != "summary.csv")  # epoch 0's row came from the checkpoint


@pytest.mark.parametrize("name", WRITES)
def test_a_full_disk_during_any_write_loses_nothing_and_says_how_to_resume(tmp_path, monkeypatch, capsys,
                                                                           reference, name):
    run_dir = str(tmp_path / "x")
    _fail_after(monkeypatch, run_dir, name, "enospc")
    assert _run(tmp_path) == 1
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    err = capsys.readouterr().err
    assert f"could not write {os.path.join(run_dir, name)}: no space left on the device" in err, err
    assert "Traceback" not in err and "--resume auto" in err.splitlines()[-1]
    held = read_training_state(os.path.join(run_dir, "last.pth.tar"))["epoch"] if name != "last.pth.tar" else None
    assert held == (None if name == "last.pth.tar" else 0)
    assert f"holds epoch {held}" in err if held is not None else "No checkpoint was written yet" in err
    # status.json is true: the epoch last.pth.tar holds (none when it was refused); a status.json the disk keeps
    # refusing says "running", which utils.tools.sweep reports as interrupted (no process holds run.lock)
    status, st = read_status(run_dir), run_state(run_dir)
    assert status["epoch"] == (-1 if held is None else 0) and st.epochs_done == status["epoch"] + 1, status
    assert st.state == ("interrupted" if name == "status.json" else "failed"), st
    assert os.path.exists(os.path.join(run_dir, "best.pth.tar")) == (name == "summary.csv")
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]
    _check_resumes_to_reference(tmp_path, reference, capsys)


def test_summary_rows_cut_or_deleted_are_restored_from_the_checkpoint(tmp_path, capsys, reference):
    run_dir = str(tmp_path / "x")
    assert _run(tmp_path, "--epochs", "1") == 0
    path = os.path.join(run_dir, "summary.csv")
    text = open(path).read()
    open(path, "w").write(text[: len(text) - 25])  # the last row cut short
    capsys.readouterr()
    assert _run(tmp_path, "--resume", "auto") == 0
    assert "lacked the rows of epochs 0: restored" in capsys.readouterr().err
    assert _rows(run_dir) == reference["rows"]


def test_summary_rows_a_checkpoint_cannot_restore_are_named(tmp_path, capsys):
    run_dir = str(tmp_path / "x")
    assert _run(tmp_path, "--epochs", "1") == 0
    last = os.path.join(run_dir, "last.pth.tar")
    state = read_training_state(last)
    del state["history"]  # a checkpoint of an older version
    from utils.training.checkpoint import save_checkpoint

    save_checkpoint(state, last)
    os.remove(os.path.join(run_dir, "summary.csv"))
    capsys.readouterr()
    assert _run(tmp_path, "--resume", "auto") == 0
    assert "no rows for epochs 0" in capsys.readouterr().err
    assert [int(r["epoch"]) for r in read_summary(os.path.join(run_dir, "summary.csv"))] == [1]


def test_a_full_disk_inside_torch_save_is_named_as_such(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError ("unexpected pos"): the writer names the cause."""
    import builtins

    import torch

    from utils.io.atomic import FileWriteError
    from utils.training.checkpoint import save_checkpoint

    path = tmp_path / "last.pth.tar"
    save_checkpoint({"epoch": 0}, path)

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("utils.io.atomic.open", lambda *a, **kw: FullDisk(builtins.open(*a, **kw)), raising=False)
    with pytest.raises(FileWriteError, match=f"could not write {path}: no space left on the device"):
        save_checkpoint({"epoch": 1, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 0 and os.listdir(tmp_path) == ["last.pth.tar"]


@pytest.mark.parametrize("name", [w for w in WRITES if w != "best.pth.tar"])  # epoch 1 does not beat epoch 0 here
def test_a_kill_after_the_last_epochs_checkpoint_is_completed_by_resume(tmp_path, monkeypatch, capsys, name):
    """Killed after any write of the last epoch's commit: --resume auto says finished and makes it true:
    status.json finished, sweep --status finished, the learning curve drawn, no temporary file left."""
    run_dir = str(tmp_path / "x")
    _fail_after(monkeypatch, run_dir, name, "kill", epoch=1)
    with pytest.raises(Killed):
        _run(tmp_path, "--plot", "true")
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    open(os.path.join(run_dir, "status.json.tmp-999999"), "w").write("{")  # a SIGKILL inside atomic_write
    assert run_state(run_dir).state == "interrupted"
    capsys.readouterr()
    assert _run(tmp_path, "--plot", "true", "--resume", "auto") == 0
    assert "is finished (2/2 epochs" in "".join(capsys.readouterr())
    assert read_status(run_dir)["state"] == "finished" and run_state(run_dir).state == "finished"
    assert [int(r["epoch"]) for r in read_summary(os.path.join(run_dir, "summary.csv"))] == [0, 1]
    assert os.path.isfile(os.path.join(run_dir, "learning_curve.png"))
    best = read_status(run_dir)["best_epoch"]
    assert checkpoint_position(os.path.join(run_dir, "best.pth.tar"))["epoch"] == best
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]
