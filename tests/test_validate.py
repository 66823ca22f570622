"""validate.py: models from models.create_model, inputs checked against models.input_spec, results never lost."""
import json
import os

import pytest
import torch

import validate
from models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "demo", "digits.yaml")
TINY = ["-c", DIGITS, "--img-size", "16", "--model-kwargs", "embed_dims=16", "--T", "1", "--batch-size", "16",
        "--progress", "false", "--workers", "0", "--fastpath", "false", "--max-eval-batches", "1",
        "--val-batch-size", "16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("maxformer_cifar", embed_dims=16, num_heads=1, num_classes=10, T=1)
    path = tmp_path_factory.mktemp("ckpt") / "last.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, path)
    return str(path)


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fails the test if validate.py spends time evaluating."""
    def boom(*a, **k):
        raise AssertionError("evaluated although the run could not succeed")

    monkeypatch.setattr(validate, "evaluate", boom)


def test_results_file_in_a_missing_folder_is_written(tmp_path, checkpoint):
    out = tmp_path / "missing_dir" / "deeper" / "r.json"
    assert validate.main(TINY + ["--checkpoint", checkpoint, "--results-file", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "maxformer_cifar" and res["samples"] == 16 and 0 <= res["top1"] <= 100
    assert sorted(p.name for p in out.parent.iterdir()) == [".outputs.json", "r.json"]  # no temp file left


def test_unusable_results_file_stops_before_evaluating(tmp_path, checkpoint, no_evaluation, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert validate.main(TINY + ["--checkpoint", checkpoint, "--results-file", str(blocker / "r.json")]) == 2
    assert "--results-file: cannot create the folder" in capsys.readouterr().err
    assert validate.main(TINY + ["--checkpoint", checkpoint, "--results-file", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_results_are_printed_if_the_file_cannot_be_written_after_all(tmp_path, capsys, monkeypatch):
    out = {"top1": 12.5}
    target = tmp_path / "r.json"
    real_open = open

    def failing_open(path, *a, **k):
        if str(path).startswith(str(target)):
            raise OSError(28, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(validate.ConfigError, match="no space left on the device.*printed above"):
        validate.write_results(str(target), out)
    assert json.loads(capsys.readouterr().out) == out


def test_model_input_is_checked_against_the_data(checkpoint, no_evaluation, capsys):
    # an event-data model (T frames of 2 channels) on the digits images: stopped with the shapes
    argv = ["-c", DIGITS, "--img-size", "16", "--model", "maxformer_dvs", "--model-kwargs", "embed_dims=16",
            "--T", "1", "--workers", "0", "--progress", "false", "--checkpoint", checkpoint]
    assert validate.main(argv) == 2
    err = capsys.readouterr().err
    assert "digits samples have shape [3, 16, 16] but maxformer_dvs takes [1, 2, 16, 16]" in err


def test_checkpoint_errors_name_the_flag_validate_offers(tmp_path, checkpoint, no_evaluation, capsys):
    path = tmp_path / "pickled.pth.tar"
    torch.save({"state_dict": torch.load(checkpoint)["state_dict"], "extra": Unsafe()}, path)
    assert validate.main(TINY + ["--checkpoint", str(path)]) == 2
    assert "pass --trust-checkpoint: it unpickles the file in full, which runs any code" in capsys.readouterr().err
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    assert validate.main(TINY + ["--checkpoint", str(tmp_path / "empty.pth.tar")]) == 2
    assert "is empty (0 bytes)" in capsys.readouterr().err
    assert validate.main(TINY + ["--checkpoint", str(tmp_path / "nope.pth.tar")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert validate.main(TINY[:5] + ["embed_dims=32"] + TINY[6:] + ["--checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "does not fit SpikingTransformer" in err and "strict=False" not in err


class Unsafe:
    pass


@pytest.mark.parametrize("ckpt,config", [("10-512-T1", "10_512_t1"), ("10-768-T4", "10_768_t4"),
                                         ("10-384-T4", "10_384_t4"), ("ms_qk_10-384_T4", "ms_qkformer_10_384_t4"),
                                         ("ms_qk_10-768_T1", "ms_qkformer_10_768_t1")])
def test_test_sh_picks_the_config_of_a_released_file(ckpt, config):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "CONFIG"}
    env.update(PYTHON="echo", CKPT=f"/w/{ckpt}.pth.tar")
    r = subprocess.run(["bash", os.path.join(ROOT, "imagenet", "test.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["validate.py", "-c", os.path.join(ROOT, "imagenet", f"{config}.yaml"),
                                "--checkpoint", f"/w/{ckpt}.pth.tar"]


def test_a_runs_checkpoint_is_evaluated_as_the_model_it_recorded(tmp_path, capsys):
    """A checkpoint train.py wrote holds its model settings: validate.py builds that model, whatever the config says,
    and names each difference; a bare state dict still has to fit the config's model."""
    torch.manual_seed(0)
    model = create_model("maxformer_cifar", embed_dims=24, num_heads=1, num_classes=10, T=1)
    path = tmp_path / "last.pth.tar"
    config = {"model": "maxformer_cifar", "model_kwargs": {"embed_dims": 24, "num_heads": 1}, "T": 1,
              "num_classes": None}
    torch.save({"state_dict": model.state_dict(), "epoch": 0, "config": config}, path)
    out = tmp_path / "r.json"
    assert validate.main(TINY + ["--checkpoint", str(path), "--results-file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model settings from {path}: embed_dims=24 (config: 16)" in printed, printed
    assert json.load(open(out))["top1"] >= 0
    bare = tmp_path / "bare.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, bare)
    assert validate.main(TINY + ["--checkpoint", str(bare)]) == 2
