"""utils.training.checkpoint.load_checkpoint: the authors' checkpoint layouts load by name, mismatches are listed."""
import argparse
import os

import pytest
import timm
import torch

import models  # registers the variants
from utils.training.checkpoint import CheckpointError, load_checkpoint

MANIFESTS = os.path.join(os.path.dirname(__file__), "data", "golden", "manifests")

# published manifest -> our registered model and kwargs
MANIFEST_MODELS = {
    "cifar_max_former_c10": ("maxformer_cifar", dict(num_classes=10)),
    "cifar_max_former_c100": ("maxformer_cifar", dict(num_classes=100)),
    "cifar_ms_qkformer_c10": ("ms_qkformer_cifar", dict(num_classes=10)),
    "cifar_ms_qkformer_c100": ("ms_qkformer_cifar", dict(num_classes=100)),
    "cifar_max_resnet18_c10": ("max_resnet18", dict(num_classes=10)),
    "cifar_max_resnet18_c100": ("max_resnet18", dict(num_classes=100)),
    "event_max_former_c10": ("maxformer_dvs", dict(num_classes=10)),
    "event_max_former_c11": ("maxformer_dvs", dict(num_classes=11)),
    "event_max_former_c10_mlp4": ("maxformer_dvs", dict(num_classes=10, mlp_ratios=4)),
    "event_ms_qkformer_c10": ("ms_qkformer_dvs", dict(num_classes=10)),
    "imagenet_maxformer_10_384": ("maxformer_10_384", {}),
    "imagenet_maxformer_10_512": ("maxformer_10_512", {}),
    "imagenet_maxformer_10_768": ("maxformer_10_768", {}),
    "imagenet_ms_qkformer_10_384": ("ms_qkformer_10_384", {}),
    "imagenet_ms_qkformer_10_512": ("ms_qkformer_10_512", {}),
    "imagenet_ms_qkformer_10_768": ("ms_qkformer_10_768", {}),
    "spikformer_c10_4_384": ("spikformer_4_384", dict(num_classes=10)),
    "spikformer_c100_4_384": ("spikformer_4_384", dict(num_classes=100)),
    "spikformer_cifar10dvs_2_256": ("spikformer_2_256", dict(num_classes=10)),
    "spikformer_dvs128_2_256": ("spikformer_2_256", dict(num_classes=11)),
    "spikformer_imagenet_8_384": ("spikformer_8_384", {}),
    "spikformer_imagenet_8_512": ("spikformer_8_512", {}),
    "spikformer_imagenet_8_768": ("spikformer_8_768", {}),
}


def manifest_state_dict(name, device="meta"):
    """A synthetic checkpoint with exactly the published keys and shapes."""
    sd = {}
    with open(os.path.join(MANIFESTS, name + ".txt")) as f:
        for line in f:
            key, shape = line.rstrip("\n").split("\t")
            dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
            dtype = torch.long if key.endswith("num_batches_tracked") else None
            sd[key] = torch.zeros(dims, device=device, dtype=dtype)
    return sd


def test_every_manifest_has_a_model():
    assert sorted(MANIFEST_MODELS) == sorted(f[:-4] for f in os.listdir(MANIFESTS))


@pytest.mark.parametrize("manifest", sorted(MANIFEST_MODELS))
def test_published_layout_loads_strictly_by_name(manifest):
    name, kwargs = MANIFEST_MODELS[manifest]
    with torch.device("meta"):  # shapes and names only: no 64 M-parameter model is materialised
        model = timm.create_model(name, **kwargs)
    sd = manifest_state_dict(manifest)
    # the authors' files hold the weights under 'state_dict' beside a pickled argparse Namespace
    report = load_checkpoint(model, {"state_dict": sd, "args": argparse.Namespace(model=name), "epoch": 199})
    assert report == {"missing": [], "unexpected": [], "mismatched": []}
    # DDP-saved files ('module.' prefix) and raw state_dicts load too
    assert not any(load_checkpoint(model, {"module." + k: v for k, v in sd.items()}).values())


def test_released_file_format_round_trip(tmp_path):
    """A real file in the released format (state_dict + argparse Namespace) loads with weights_only safety."""
    torch.manual_seed(0)
    src = timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=1)
    path = tmp_path / "released.pth.tar"
    torch.save({"epoch": 3, "arch": "maxformer_cifar", "state_dict": src.state_dict(), "version": 2,
                "args": argparse.Namespace(model="maxformer_cifar", lr=1e-3), "metric": 50.0}, path)
    dst = timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=1)
    load_checkpoint(dst, str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_mismatch_lists_missing_unexpected_and_misshaped_keys():
    with torch.device("meta"):
        model = timm.create_model("maxformer_cifar")
    sd = manifest_state_dict("cifar_max_former_c10")
    del sd["stage3.1.mlp.fc2_bn.weight"]
    sd["stage4.0.attn.q_conv.weight"] = torch.zeros(1, device="meta")
    sd["head.weight"] = torch.zeros(100, 384, device="meta")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, sd)
    msg = str(err.value)
    assert "missing (1):\n    stage3.1.mlp.fc2_bn.weight" in msg
    assert "unexpected (1):\n    stage4.0.attn.q_conv.weight" in msg
    assert "head.weight: checkpoint (100, 384) vs model (10, 384)" in msg
    assert "num_classes" in msg and "strict=False" not in msg  # says how to fix it, with what a CLI offers
    report = load_checkpoint(model, sd, strict=False)
    assert [len(v) for v in report.values()] == [1, 1, 1]


def test_not_found_names_the_path_and_nearby_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.save(model.state_dict(), tmp_path / "best.pth.tar")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope.pth.tar'.*in that folder: best.pth.tar"):
        load_checkpoint(model, str(tmp_path / "nope.pth.tar"))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(model, str(tmp_path))
    with pytest.raises(CheckpointError, match="no tensors found"):
        load_checkpoint(model, {"epoch": 1})


def _broken_files(tmp_path):
    good = tmp_path / "good.pth.tar"
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "args": argparse.Namespace(lr=1.0)}, good)
    data = good.read_bytes()
    old = tmp_path / "old_format.pth"
    torch.save({"w": torch.zeros(3)}, old, _use_new_zipfile_serialization=False)
    files = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "text": b"not a checkpoint\n",
             "old_format_truncated": old.read_bytes()[:-40]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return files


@pytest.mark.parametrize("trust", [False, True])
def test_empty_truncated_and_random_files_are_called_broken_not_unsafe(tmp_path, trust):
    model = torch.nn.Linear(2, 2)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\).*Fetch or copy it again"):
        load_checkpoint(model, str(tmp_path / "empty"), trust_pickle=trust)
    for name in _broken_files(tmp_path):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(model, str(tmp_path / name), trust_pickle=trust, trust_flag="--trust-checkpoint")
        msg = str(err.value)
        want = {"truncated": "is truncated", "old_format_truncated": "is truncated",
                "text": "is not a PyTorch checkpoint: it is a text file"}.get(name, "")
        assert want in msg and str(tmp_path / name) in msg, (name, msg)
        assert any(k in msg for k in ("truncated", "damaged", "not a PyTorch checkpoint")), (name, msg)
        assert "trust" not in msg and "pickle" not in msg, (name, msg)  # never advice to switch off safety


def test_unsafe_pickle_advice_fits_the_caller(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "pickled.pth"  # an arbitrary pickled object: refused unless trusted
    torch.save({"state_dict": model.state_dict(), "extra": PickledThing()}, path)
    # a command line with a trust flag names it
    with pytest.raises(CheckpointError, match=r"PickledThing.*can run code.*pass --trust-checkpoint: "
                                              r".* only for files you trust\.$"):
        load_checkpoint(model, str(path), trust_flag="--trust-checkpoint")
    # without one (train.py, Python callers) the advice is the convert command, which has the flag
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, str(path))
    msg = str(err.value)
    assert f"python -m utils.training.checkpoint convert {path} OUT.pth.tar --trust-checkpoint" in msg
    assert "pass --trust-checkpoint" not in msg
    load_checkpoint(model, str(path), trust_pickle=True)
    # and that advice works: the copy holds no pickled objects and loads safely
    from utils.training.checkpoint import main, read_checkpoint
    kwargs = ["embed_dims=32", "num_heads=2"]
    src = timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2)
    torch.save({"state_dict": src.state_dict(), "arch": "maxformer_cifar", "extra": PickledThing()}, path)
    out = tmp_path / "safe.pth.tar"
    assert main(["convert", str(path), str(out), "--model-kwargs", *kwargs]) == 2  # refused without the flag
    assert main(["convert", str(path), str(out), "--trust-checkpoint", "--model-kwargs", *kwargs]) == 0
    safe = read_checkpoint(out)
    assert "extra" not in safe and safe["arch"] == "maxformer_cifar"
    load_checkpoint(timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2), str(out))


def test_does_not_fit_lists_keys_without_unavailable_advice():
    with torch.device("meta"):
        model = timm.create_model("maxformer_cifar")
    sd = manifest_state_dict("cifar_max_former_c10")
    sd["head.weight"] = torch.zeros(100, 384, device="meta")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, sd)
    msg = str(err.value)
    assert msg.startswith("checkpoint does not fit SpikingTransformer")
    assert "head.weight: checkpoint (100, 384) vs model (10, 384)" in msg
    assert "strict=False" not in msg and "num_classes" in msg


class PickledThing:
    pass


def test_a_checkpoint_that_does_not_fit_names_the_settings_it_records(tmp_path):
    """validate.py / --initial-checkpoint with other model kwargs: the error says the ones the run used."""
    trained = models.create_model("maxformer_cifar", embed_dims=32, num_heads=1, T=2, num_classes=7)
    path = tmp_path / "best.pth.tar"
    config = {"model": "maxformer_cifar", "T": 2, "num_classes": None,
              "model_kwargs": {"embed_dims": 32, "num_heads": 1}}
    torch.save({"state_dict": trained.state_dict(), "config": config}, path)
    expected = ("On the command line: --model maxformer_cifar --T 2 --num-classes 7 --model-kwargs embed_dims=32 "
                "num_heads=1 (or -c the run's args.yaml)")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(models.create_model("maxformer_cifar", embed_dims=64, num_heads=1), path, log=None)
    assert expected in str(info.value)
