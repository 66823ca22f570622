"""Workers torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0): they continue the run their launch started
from its last checkpoint, whatever ``--resume``/``--overwrite`` say, and leave another launch's run alone.
Single-process runs with torchrun's environment set by hand (tests/test_multinode.py restarts real workers)."""
import pytest

import train
from tests.test_sweep import tiny_config
from utils.training.logger import read_summary
from utils.training.run_folder import read_status


def _train(monkeypatch, cfg, out, launch, restarts, *extra):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", launch)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))
    return train.main(["-c", cfg, "--output", str(out), "--experiment", "e", "--plot", "false",
                       "--tensorboard", "false", *extra])


@pytest.fixture
def first_attempt(tmp_path, monkeypatch, one_thread):
    """Launch L1's first attempt trained epoch 0 of 2 (``--epochs 1`` stands for the point it was killed)."""
    cfg = tiny_config(str(tmp_path), "t", "model_kwargs: {embed_dims: 16, num_heads: 1}\n")
    assert _train(monkeypatch, cfg, tmp_path, "L1", 0, "--epochs", "1", "--overwrite", "true") == 0
    assert read_status(str(tmp_path / "e"))["launch"] == "L1"
    return cfg


def test_a_restarted_worker_continues_its_launchs_run(tmp_path, monkeypatch, first_attempt, capsys):
    # the command still says --overwrite true (no --resume): a restart must not delete the run
    assert _train(monkeypatch, first_attempt, tmp_path, "L1", 1, "--epochs", "2", "--overwrite", "true") == 0
    assert [int(r["epoch"]) for r in read_summary(str(tmp_path / "e" / "summary.csv"))] == [0, 1]
    out = capsys.readouterr()
    assert f"torchrun restarted the workers: continuing from {tmp_path / 'e' / 'last.pth.tar'}" in out.out + out.err
    assert read_status(str(tmp_path / "e"))["state"] == "finished"


def test_a_restart_of_another_launch_runs_the_command_as_given(tmp_path, monkeypatch, first_attempt, capsys):
    assert _train(monkeypatch, first_attempt, tmp_path, "L2", 1, "--epochs", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert [int(r["epoch"]) for r in read_summary(str(tmp_path / "e" / "summary.csv"))] == [0]

