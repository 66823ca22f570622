"""train.py end to end on the bundled digits: it learns, writes a complete run folder, stops cleanly on
NaN, and validate.py reproduces the logged accuracy from the saved checkpoint."""
import json
import math
import os
import sys
import types

import pytest
import torch
import yaml

import train
from utils.training.run_setup import make_loaders
import validate
from tests.helpers import require_cpp_compiler
from utils.training.checkpoint import read_training_state
from utils.training.logger import read_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "demo", "digits.yaml")
# the plain eager path: compiling the fast path's neurons costs seconds per run (tested once, below)
TINY = ["-c", DIGITS, "--img-size", "16", "--model-kwargs", "embed_dims=16", "--T", "1", "--batch-size", "16",
        "--progress", "false", "--workers", "0", "--fastpath", "false", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_short_digits_run_learns_and_writes_the_run_folder(tmp_path):
    rc = train.main(["-c", DIGITS, "--epochs", "4", "--output", str(tmp_path), "--experiment", "learn",
                     "--progress", "false", "--fastpath", "false"])
    assert rc == 0
    run = tmp_path / "learn"
    rows = read_summary(str(run / "summary.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5", "img_per_s",
                             "epoch_seconds"]
    top1 = [float(r["eval_top1"]) for r in rows]
    assert top1[-1] >= 50.0, top1  # chance is 10 %
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for f in ("args.yaml", "summary.csv", "last.pth.tar", "best.pth.tar", "learning_curve.png"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run / "tensorboard"))
    args = yaml.safe_load((run / "args.yaml").read_text())
    info = args["run_info"]
    assert args["epochs"] == 4 and args["model"] == "maxformer_cifar"
    assert info["world_size"] == 1 and info["effective_batch"] == args["batch_size"]
    assert {"torch", "timm", "spikingjelly"} <= set(info["versions"]) and info["device"] == "cpu"
    assert "lif" in info["neuron_implementation"] and info["fastpath"].startswith("off")
    best = read_training_state(run / "best.pth.tar")
    assert best["best_metric"] == pytest.approx(max(top1), abs=1e-3)


def test_engine_switches_ema_accum_clip_bf16_wandb_and_validate(tmp_path, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or fake
    fake.log = lambda data, step=None: calls["log"].append((step, data))
    fake.finish = lambda: calls.__setitem__("finish", calls["finish"] + 1)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")

    rc = train.main(TINY + ["--epochs", "1", "--max-train-batches", "4", "--accum-steps", "2", "--clip-grad", "1.0",
                            "--amp", "bf16", "--model-ema", "true", "--model-ema-decay", "0.5", "--log-wandb", "true",
                            "--output", str(tmp_path), "--experiment", "sw"])
    assert rc == 0
    run = tmp_path / "sw"
    row = read_summary(str(run / "summary.csv"))[0]
    assert {"ema_eval_loss", "ema_eval_top1", "ema_eval_top5"} <= set(row)
    state = read_training_state(run / "last.pth.tar")
    assert state["num_updates"] == 2 and "state_dict_ema" in state  # 4 micro-batches / accum 2
    assert calls["init"][0]["project"] == "from-env" and calls["log"][0][0] == 0 and calls["finish"] == 1
    assert calls["log"][0][1]["eval_top1"] == pytest.approx(float(row["eval_top1"]), abs=1e-3)

    for ema, col in ((False, "eval_top1"), (True, "ema_eval_top1")):
        out = tmp_path / f"val_{ema}.json"
        rc = validate.main(TINY + ["--amp", "bf16", "--checkpoint", str(run / "last.pth.tar"), "--use-ema", str(ema),
                                   "--results-file", str(out)])
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["samples"] == 360
        assert res["top1"] == pytest.approx(float(row[col]), abs=1e-3), col

    # --energy: per-image energy on real eval data, reports written next to the checkpoint
    out = tmp_path / "val_energy.json"
    rc = validate.main(TINY + ["--checkpoint", str(run / "last.pth.tar"), "--energy", "true", "--energy-batches", "2",
                               "--results-file", str(out)])
    assert rc == 0
    energy = json.loads(out.read_text())["energy"]
    report = json.loads((run / "energy" / "maxformer_cifar_T1_embed_dims16-num_heads1_energy.json").read_text())
    assert energy["mj_per_image"] == pytest.approx(report["energy_mj_per_image"]) and energy["mj_per_image"] > 0
    assert 0 < energy["mac_flops_per_image"] < report["ann_energy_mj_per_image"] / 4.6e-9
    assert (run / "energy" / "maxformer_cifar_T1_embed_dims16-num_heads1_firing_rates.csv").is_file()


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import utils.training.engine as engine

    real = engine.build_train_loss

    class Poisoned(torch.nn.Module):  # the loss turns NaN from the 3rd step (epoch 1) on
        def __init__(self, loss):
            super().__init__()
            self.loss, self.n = loss, 0

        def forward(self, out, y):
            self.n += 1
            return self.loss(out, y) * (math.nan if self.n > 2 else 1.0)

    def poisoned(cfg, mixup_active):
        return Poisoned(real(cfg, mixup_active))

    monkeypatch.setattr(engine, "build_train_loss", poisoned)
    rc = train.main(TINY + ["--epochs", "3", "--max-train-batches", "2", "--max-eval-batches", "1",
                            "--output", str(tmp_path), "--experiment", "nan"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "training diverged: loss is nan at epoch 1" in err and "last.pth.tar" in err
    assert read_training_state(tmp_path / "nan" / "last.pth.tar")["epoch"] == 0
    assert len(read_summary(str(tmp_path / "nan" / "summary.csv"))) == 1
    # the advice is what resuming does: a changed --lr takes effect (tests/test_run_folder.py)
    assert "--resume auto --lr <lower>" in err and "--experiment nan" in err
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["state"] == "diverged" and status["epoch"] == 0 and "loss is nan" in status["exit_message"]


def test_default_fast_path_trains_like_the_eager_path_and_is_recorded(tmp_path):
    # the fast path (utils.training.fastpath train defaults: compiled PyTorch neurons) computes the eager maths up to
    # float rounding: the first step's loss (before any update) is equal; after one update rounding may
    # flip near-threshold spikes, so later losses are only close
    require_cpp_compiler()
    common = ["-c", DIGITS, "--epochs", "2", "--max-train-batches", "1", "--max-eval-batches", "1", "--progress",
              "false", "--plot", "false", "--tensorboard", "false", "--output", str(tmp_path)]
    assert train.main(common + ["--experiment", "fast", "--fastpath", "true"]) == 0
    assert train.main(common + ["--experiment", "eager", "--fastpath", "false"]) == 0
    fast, eager = (read_summary(str(tmp_path / name / "summary.csv")) for name in ("fast", "eager"))
    assert float(fast[0]["train_loss"]) == pytest.approx(float(eager[0]["train_loss"]), rel=1e-5)
    assert float(fast[1]["train_loss"]) == pytest.approx(float(eager[1]["train_loss"]), rel=1e-3)
    info = yaml.safe_load((tmp_path / "fast" / "args.yaml").read_text())["run_info"]
    assert info["fastpath"]["neuron_impl"] == "torch" and info["fastpath"]["compile"] == "neurons"
    assert "impl='torch'" in info["neuron_implementation"]
    eager_info = yaml.safe_load((tmp_path / "eager" / "args.yaml").read_text())["run_info"]
    assert eager_info["fastpath"].startswith("off") and "spikingjelly" in eager_info["neuron_implementation"]


def test_synthetic_data_and_no_cpp_compiler_fallback(tmp_path, monkeypatch, capsys):
    import utils.training.fastpath as fastpath

    monkeypatch.setattr(fastpath, "cpp_compiler", lambda: None)
    rc = train.main(TINY + ["--fastpath", "true", "--dataset", "synthetic", "--synthetic-size", "32", "16",
                            "--epochs", "1", "--max-train-batches", "2", "--output", str(tmp_path),
                            "--experiment", "syn", "--grad-checkpointing", "true", "--compact-spikes", "true"])
    assert rc == 0
    log = "".join(capsys.readouterr())
    assert log.count("no C++ compiler found") == 1 and "fastpath: false" in log
    args = yaml.safe_load((tmp_path / "syn" / "args.yaml").read_text())
    assert args["dataset"] == "synthetic" and args["synthetic_size"] == [32, 16]
    assert args["run_info"]["fastpath"]["compile"] is False and args["run_info"]["fastpath"]["neuron_impl"] == "torch"
    assert args["run_info"]["fastpath"]["compact_spikes"] is True and args["run_info"]["fastpath"]["grad_checkpointing"]
    row = read_summary(str(tmp_path / "syn" / "summary.csv"))[0]
    assert float(row["img_per_s"]) > 0 and math.isfinite(float(row["train_loss"]))


def test_persistent_workers_load_what_a_fresh_loader_loads(tmp_path):
    # with workers, augmentation seeds come from (seed, epoch, sample): the same batches with 1 or 2 persistent
    # workers, and a fresh loader at epoch 1 (a resumed run) replays epoch 1 exactly
    from torch.utils.data import Subset

    from utils.config import parse_config
    from utils.data import create_datasets
    from utils.training.distributed import init_distributed

    def epochs(workers, first_epoch=0, n=2):
        cfg = parse_config(["-c", DIGITS, "--digits-augment", "true", "--workers", str(workers), "--batch-size", "8"])
        train_set, eval_set = create_datasets(cfg)
        loader, _, sampler = make_loaders(cfg, Subset(train_set, range(24)), eval_set,
                                                 init_distributed("cpu", "auto"))
        assert loader.persistent_workers == (workers > 0)
        out = []
        for epoch in range(first_epoch, first_epoch + n):
            sampler.set_epoch(epoch)
            out.append([b for b in loader])
        return out

    one, two, resumed = epochs(1), epochs(2), epochs(2, first_epoch=1, n=1)
    for a, b in [(one, two), (one[1:], resumed)]:
        for ea, eb in zip(a, b):
            assert len(ea) == len(eb) == 3
            for (xa, ya), (xb, yb) in zip(ea, eb):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(one[0][0][0], one[1][0][0])  # epochs differ
    plain = epochs(0, n=1)[0]  # in the main process the global RNG (seeded per epoch) augments instead
    assert [torch.equal(x, y) for (x, _), (y, _) in zip(plain, one[0])] == [False] * 3


@pytest.mark.parametrize("extra,needle", [
    (["--compile", "true"], "compile: true needs fastpath: true"),
    (["--compact-spikes", "true"], "compact_spikes: true needs fastpath: true"),
    (["--model", "maxformer_cifr"], "unknown model 'maxformer_cifr'. Did you mean: maxformer_cifar"),
    (["--model-kwargs", "embed_dimz=8"], "has no setting 'embed_dimz'. Did you mean: embed_dims"),
    (["--dataset", "cifar10", "--data-path", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--amp", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--resume", "/nonexistent/last.pth.tar"], "checkpoint not found"),
])
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, extra, needle):
    rc = train.main(TINY + ["--epochs", "1", "--output", str(tmp_path)] + extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


@pytest.mark.parametrize("extra,needle", [
    (["--dataset", "synthetic", "--synthetic-size", "8", "4"], "'batch_size': 16 is larger than the 8 training"),
    (["--dataset", "cifar10", "--data-path", "{tmp}/missing"], "missing"),
    (["--dataset", "cifar10", "--data-path", "{tmp}/flat"], "cifar-10-batches-py/"),  # a folder, wrongly laid out
])
def test_data_problems_stop_before_the_run_folder_is_written(tmp_path, capsys, extra, needle):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "data_batch_1").write_bytes(b"")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc = train.main(TINY + ["--epochs", "1", "--output", str(tmp_path / "out"), "--experiment", "x"] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out" / "x").exists()  # no run.lock, no status.json


def test_cuda_amp_fp16_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (fp16 autocast + GradScaler)")
    from utils.training.engine import amp_context, make_scaler

    dev = torch.device("cuda")
    assert make_scaler("fp16", dev) is not None and make_scaler("bf16", dev) is None
    with amp_context("fp16", dev)():
        y = torch.nn.Linear(4, 4).cuda()(torch.randn(2, 4, device=dev))
    assert y.dtype == torch.float16
