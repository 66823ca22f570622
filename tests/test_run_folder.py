"""The run folder: never overwritten by accident, one process at a time (run.lock), status.json, and resume
semantics (a changed lr / epochs on resume takes effect)."""
import json
import math
import os

import pytest

import train
from utils.training.checkpoint import read_training_state
from utils.training.logger import read_summary
from utils.training.run_folder import RunFolder, is_running, read_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--img-size", "16", "--model-kwargs", "embed_dims=16",
        "--T", "1", "--batch-size", "16", "--progress", "false", "--workers", "0", "--fastpath", "false",
        "--max-train-batches", "2", "--max-eval-batches", "1", "--plot", "false", "--tensorboard", "false",
        "--warmup-epochs", "0", "--sched-on-updates", "false", "--lr", "5e-3", "--min-lr", "1e-5"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, *extra, name="x"):
    return train.main(TINY + ["--output", str(tmp_path), "--experiment", name, *extra])


def _lrs(tmp_path, name="x"):
    return [float(r["lr"]) for r in read_summary(str(tmp_path / name / "summary.csv"))]


def test_rerun_without_resume_stops_and_loses_nothing(tmp_path, capsys):
    assert _run(tmp_path, "--epochs", "2") == 0
    run = tmp_path / "x"
    before = {f: (run / f).read_bytes() for f in ("summary.csv", "best.pth.tar", "last.pth.tar", "args.yaml")}
    status = read_status(str(run))
    assert status["state"] == "finished" and status["epoch"] == 1 and status["total_epochs"] == 2
    assert status["best_top1"] == pytest.approx(read_training_state(run / "best.pth.tar")["best_metric"])
    assert {"best_epoch", "pid", "updated", "exit_message"} <= set(status)
    capsys.readouterr()

    assert _run(tmp_path, "--epochs", "1") == 2  # the same folder, no --resume
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "--experiment" in err and "--overwrite" in err
    assert {f: (run / f).read_bytes() for f in before} == before

    # resuming a finished run: says so, with its best top-1, and rewrites nothing
    assert _run(tmp_path, "--epochs", "2", "--resume", "auto") == 0
    out = "".join(capsys.readouterr())
    assert "is finished (2/2 epochs, best top-1" in out and "another --experiment" in out
    assert {f: (run / f).read_bytes() for f in before} == before

    # an explicit --overwrite starts afresh
    assert _run(tmp_path, "--epochs", "1", "--overwrite", "true") == 0
    assert len(read_summary(str(run / "summary.csv"))) == 1 and read_status(str(run))["total_epochs"] == 1


def test_a_second_process_on_a_locked_folder_stops_at_once(tmp_path, capsys):
    holder = RunFolder(str(tmp_path / "x"))
    holder.lock("train.py --the-other-run")
    try:
        assert is_running(str(tmp_path / "x"))
        assert _run(tmp_path, "--epochs", "1") == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {os.getpid()}" in err and "--the-other-run" in err
        assert not (tmp_path / "x" / "summary.csv").exists()
    finally:
        holder.release()
    # the lock file left behind by a finished (or killed) holder does not block
    assert not is_running(str(tmp_path / "x"))
    assert _run(tmp_path, "--epochs", "1") == 0
    assert not is_running(str(tmp_path / "x")) and read_status(str(tmp_path / "x"))["state"] == "finished"


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path, capsys):
    lr, min_lr = 5e-3, 1e-5
    assert _run(tmp_path, "--epochs", "2") == 0
    capsys.readouterr()
    assert _run(tmp_path, "--epochs", "4", "--resume", "auto") == 0
    log = "".join(capsys.readouterr())
    assert "epochs 2 -> 4" in log and "in effect from here on" in log
    cosine = [min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * e / n))
              for n, e in ((2, 0), (2, 1), (4, 2), (4, 3))]
    assert _lrs(tmp_path) == pytest.approx(cosine, rel=1e-3)  # epochs 2, 3 on the 4-epoch cosine, not at min_lr
    assert read_status(str(tmp_path / "x"))["total_epochs"] == 4


def test_resume_with_a_lower_lr_uses_it(tmp_path, capsys):
    assert _run(tmp_path, "--epochs", "2", "--sched", "none", "--lr", "4e-3") == 0
    assert _run(tmp_path, "--epochs", "3", "--sched", "none", "--lr", "1e-3", "--resume", "auto") == 0
    assert _lrs(tmp_path) == pytest.approx([4e-3, 4e-3, 1e-3])
    state = read_training_state(tmp_path / "x" / "last.pth.tar")
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {1e-3}
    assert "lr 0.004 -> 0.001" in "".join(capsys.readouterr())


def test_banner_explains_warmup_and_cooldown(tmp_path, capsys):
    assert _run(tmp_path, "--epochs", "2", "--warmup-epochs", "1", "--cooldown-epochs", "1", "--max-train-batches",
                "1") == 0
    log = "".join(capsys.readouterr())
    assert ("cosine over 2 epochs, the first 1 of them linear warm-up + 1 cooldown epochs at min_lr 1e-05 "
            "= 3 epochs in all (0..2)") in log
    assert json.loads((tmp_path / "x" / "status.json").read_text())["epoch"] == 2


def test_resume_command_keeps_the_overrides():
    argv = ["-c", "demo/digits.yaml", "--lr", "1e-3", "--resume", "x.pth", "--overwrite=true", "--experiment", "a b"]
    assert train.resume_command(argv) == ("python train.py -c demo/digits.yaml --lr 1e-3 --experiment 'a b' "
                                          "--resume auto")


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_unreadable_sample_keeps_the_work_done_and_names_the_file(tmp_path, capsys, split):
    """A truncated image stops the run with its name; the position is saved, and once the file is fixed
    ``--resume auto`` continues from there (a bad validation image costs no training)."""
    from tests.test_data import write_imagefolder

    data = tmp_path / "inet"
    write_imagefolder(data, per_class=8, size=(20, 20))
    bad = data / split / "n01443537" / ("n01443537_5.JPEG" if split == "train" else "n01443537_1.JPEG")
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    args = ["--dataset", "imagenet", "--data-path", str(data), "--img-size", "16", "--batch-size", "2",
            "--max-train-batches", "0", "--max-eval-batches", "0", "--epochs", "1", "--val-batch-size", "4",
            "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0"]
    assert _run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "position is saved" in err and "--resume auto" in err
    state = read_training_state(str(tmp_path / "x" / "last.pth.tar"))
    steps = state["partial_epoch"]["step"]
    assert state["epoch"] == -1 and (0 < steps < 8 if split == "train" else steps == 8)
    assert read_status(str(tmp_path / "x"))["state"] == "failed"
    bad.write_bytes(good)
    assert _run(tmp_path, *args, "--resume", "auto") == 0
    rows = read_summary(str(tmp_path / "x" / "summary.csv"))
    assert [int(r["epoch"]) for r in rows] == [0] and math.isfinite(float(rows[0]["train_loss"]))


def test_a_batch_size_changed_mid_epoch_trains_each_sample_once(tmp_path, monkeypatch):
    """Stopped after 384 samples of epoch 0 (3 steps of 128), resumed with batch 96: the epoch continues at the
    385th sample of its order; no sample is trained twice or skipped (the last 69 fall off as drop_last)."""
    import signal

    from torch.utils.data import Dataset

    from utils import data as data_lib
    from utils.config import parse_config
    from utils.training.seeding import SeededDistributedSampler

    fetched = []

    class Recording(Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            fetched.append(i)
            return self.ds[i]

    real = data_lib.create_datasets
    monkeypatch.setattr(data_lib, "create_datasets", lambda cfg: (Recording(real(cfg)[0]), real(cfg)[1]))

    class StopAfter384:
        signum = signal.SIGTERM

        def requested(self):
            return len(fetched) >= 384

    args = TINY + ["--output", str(tmp_path), "--experiment", "x", "--epochs", "1", "--max-train-batches", "0"]
    with pytest.raises(train.TrainingStopped):
        train.run(parse_config(args + ["--batch-size", "128"]), StopAfter384())
    first = list(fetched)
    fetched.clear()
    assert train.main(args + ["--batch-size", "96", "--resume", "auto"]) == 0
    order = SeededDistributedSampler(range(1437), num_replicas=1, rank=0, shuffle=True, seed=0)
    order.set_epoch(0)
    order = list(order)
    assert first == order[:384]
    assert fetched == order[384:384 + (1437 - 384) // 96 * 96]


def test_refusals_that_name_the_fix(tmp_path, capsys):
    # --eval-metric ema_top1 without an EMA: refused before anything is written
    assert _run(tmp_path, "--epochs", "1", "--eval-metric", "ema_top1") == 2
    err = capsys.readouterr().err
    assert "ema_top1" in err and "model_ema is false" in err and "--model-ema true" in err
    assert not (tmp_path / "x").exists()
    # --resume auto --overwrite true on a finished run: refused, advising what does help
    assert _run(tmp_path, "--epochs", "1") == 0
    before = (tmp_path / "x" / "last.pth.tar").read_bytes()
    capsys.readouterr()
    assert _run(tmp_path, "--epochs", "1", "--resume", "auto", "--overwrite", "true") == 2
    err = capsys.readouterr().err
    assert "is finished" in err and "drop --resume (keep --overwrite true)" in err and "larger --epochs" in err
    assert (tmp_path / "x" / "last.pth.tar").read_bytes() == before


def test_checkpoint_hist_keeps_the_best_epochs(tmp_path):
    """timm's --checkpoint-hist N: checkpoint-<epoch>.pth.tar of the N best epochs by the eval metric, the others
    removed as better ones come; --overwrite clears them with the other outputs."""
    assert _run(tmp_path, "--epochs", "4", "--checkpoint-hist", "2") == 0
    run = tmp_path / "x"
    rows = read_summary(str(run / "summary.csv"))
    ranked = sorted(rows, key=lambda r: (-float(r["eval_top1"]), int(r["epoch"])))
    kept = sorted(f for f in os.listdir(run) if f.startswith("checkpoint-"))
    assert kept == sorted(f"checkpoint-{int(r['epoch'])}.pth.tar" for r in ranked[:2])
    for name in kept:
        assert read_training_state(run / name)["epoch"] == int(name[len("checkpoint-"):-len(".pth.tar")])
    assert _run(tmp_path, "--epochs", "1", "--overwrite", "true") == 0
    assert not [f for f in os.listdir(run) if f.startswith("checkpoint-")]


def test_resuming_an_older_checkpoint_into_its_own_folder_names_the_epochs_it_would_lose(tmp_path, capsys):
    assert _run(tmp_path, "--epochs", "3", "--checkpoint-hist", "3") == 0
    run, older = tmp_path / "x", str(tmp_path / "x" / "checkpoint-0.pth.tar")
    before = {f: (run / f).read_bytes() for f in ("summary.csv", "last.pth.tar", "status.json")}
    capsys.readouterr()
    assert _run(tmp_path, "--epochs", "3", "--resume", older) == 2
    err = capsys.readouterr().err
    assert (f"--resume {older} holds epoch 0 but {run / 'last.pth.tar'} holds epoch 2: resuming into {run} would "
            f"throw away epochs 1-2") in err and "--resume auto" in err and "--overwrite true" in err, err
    assert {f: (run / f).read_bytes() for f in before} == before
    # into a new folder: said as it is (no crash to recover from)
    assert _run(tmp_path, "--epochs", "3", "--resume", older, name="branch") == 0
    out = "".join(capsys.readouterr())
    assert f"summary.csv: the rows of epochs 0 come from {older}, the checkpoint this run continues" in out
    assert "ended before" not in out and "lacked the rows" not in out
    # into a folder holding another run: refused, as a fresh start there would be
    assert _run(tmp_path, "--epochs", "3", "--resume", str(run / "last.pth.tar"), name="branch") == 2
    assert f"run folder {tmp_path / 'branch'} already holds a run" in capsys.readouterr().err
    # --overwrite true: epochs 1-2 are trained again from epoch 0
    assert _run(tmp_path, "--epochs", "3", "--resume", older, "--overwrite", "true") == 0
    assert [int(r["epoch"]) for r in read_summary(str(run / "summary.csv"))] == [0, 1, 2]


def test_a_stop_signal_that_breaks_the_work_in_progress_ends_interrupted_with_a_short_message(tmp_path, monkeypatch,
                                                                                             capsys):
    """E.g. SIGTERM while torch.compile's workers compile: their failure is the stop, not an error of the run;
    and any message status.json holds is bounded, the whole of it in error.log."""
    import signal

    compiler_log = "InductorError: SubprocException\n" + "x" * 300_000
    stop = train.StopSignals()

    def compiling(*args):
        stop.signum = signal.SIGTERM
        raise RuntimeError(compiler_log)

    monkeypatch.setattr(train, "_train", compiling)
    monkeypatch.setattr(train, "StopSignals", lambda: stop)
    assert _run(tmp_path, "--epochs", "1") == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM before its next step could finish (RuntimeError" in err and "--resume auto" in err
    assert len(err) < 2000
    status = read_status(str(tmp_path / "x"))
    assert status["state"] == "interrupted" and len(status["exit_message"]) < 400, status

    def failing(*args):
        raise RuntimeError(compiler_log)

    monkeypatch.setattr(train, "_train", failing)
    stop.signum = None
    with pytest.raises(RuntimeError):
        _run(tmp_path, "--epochs", "1", "--overwrite", "true")
    status = read_status(str(tmp_path / "x"))
    assert status["state"] == "failed" and len(status["exit_message"]) < 2200
    assert status["exit_message"].endswith(f"the whole message is in {tmp_path / 'x' / 'error.log'}]")
    assert (tmp_path / "x" / "error.log").read_text() == f"RuntimeError: {compiler_log}\n"


def test_a_training_set_changed_since_the_checkpoint_restarts_the_interrupted_epoch(tmp_path, capsys):
    """The advice for an unreadable file is to delete it; the resume then sees 15 samples instead of 16: the saved
    position (a sample order for 16) no longer applies, so the epoch starts again, and the run says so."""
    from tests.test_data import write_imagefolder

    data = tmp_path / "inet"
    write_imagefolder(data, per_class=8, size=(20, 20))
    bad = data / "train" / "n01443537" / "n01443537_5.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    args = ["--dataset", "imagenet", "--data-path", str(data), "--img-size", "16", "--batch-size", "2",
            "--max-train-batches", "0", "--max-eval-batches", "0", "--epochs", "2", "--val-batch-size", "4",
            "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0"]
    assert _run(tmp_path, *args) == 2
    state = read_training_state(str(tmp_path / "x" / "last.pth.tar"))
    assert state["partial_epoch"]["step"] > 0 and state["data"]["train"]["size"] == 16
    bad.unlink()
    capsys.readouterr()
    assert _run(tmp_path, *args, "--resume", "auto") == 0
    err = capsys.readouterr().err
    assert (f"the training set changed since {tmp_path / 'x' / 'last.pth.tar'} was written (16 -> 15 samples): "
            f"epoch 0 starts again from its first step") in err, err
    assert "continues at its sample" not in err
    assert [int(r["epoch"]) for r in read_summary(str(tmp_path / "x" / "summary.csv"))] == [0, 1]
    assert read_training_state(str(tmp_path / "x" / "last.pth.tar"))["data"]["train"]["size"] == 15
    # the same files again: nothing to say
    assert _run(tmp_path, *args, "--epochs", "3", "--resume", "auto") == 0
    assert "set changed since" not in capsys.readouterr().err


def test_a_run_refused_during_its_setup_leaves_no_folder(tmp_path, capsys):
    assert _run(tmp_path, "--epochs", "1", "--amp", "fp16", "--device", "cpu") == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # no run.lock, no status.json "failed" of a run that never started
