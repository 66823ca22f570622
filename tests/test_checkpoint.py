"""utils.checkpoint.load_checkpoint: the authors' checkpoint layouts load by name, mismatches are listed."""
import argparse
import os

import pytest
import timm
import torch

import models  # noqa: F401  (registers the variants)
from utils.checkpoint import CheckpointError, load_checkpoint

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
            sd[key] = torch.zeros(dims, device=device, dtype=torch.long if key.endswith("num_batches_tracked") else None)
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
    assert "num_classes" in msg  # says how to fix it
    report = load_checkpoint(model, sd, strict=False)
    assert [len(v) for v in report.values()] == [1, 1, 1]


def test_unreadable_inputs_give_clear_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(model, str(tmp_path / "nope.pth.tar"))
    with pytest.raises(CheckpointError, match="no tensors found"):
        load_checkpoint(model, {"epoch": 1})
    path = tmp_path / "pickled.pth"  # an arbitrary pickled object: refused unless trusted
    torch.save({"state_dict": model.state_dict(), "extra": PickledThing()}, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_checkpoint(model, str(path))
    load_checkpoint(model, str(path), trust_pickle=True)


class PickledThing:
    pass
