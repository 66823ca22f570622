"""Spikformer: golden conformance (all six files), sizes, published keys, SPS, residual stream, inputs, neurons,
errors."""
import os

import pytest
import timm
import torch
from spikingjelly.activation_based import neuron as sj_neuron

from models import reset_net
from models.neurons import spiking_modules
from models.published import REFERENCE_CTORS
from models.spikformer import SPS, Spikformer
from tests.helpers import assert_batch_invariant
from utils.training.checkpoint import CheckpointError, load_checkpoint
from utils.verify.conformance import check_file

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")
GOLDEN_FILES = ["spikformer_cifar", "spikformer_cifar_active", "spikformer_imagenet",
                "spikformer_imagenet_active", "spikformer_dvs", "spikformer_dvs_active"]


def _manifest(name):
    with open(os.path.join(GOLDEN, "manifests", name + ".txt")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return {k: torch.Size(eval(shape)) for k, shape in rows}


def _tiny(variant="cifar", **kw):
    kw = {"variant": variant, "embed_dims": 32, "depths": 2, "num_heads": 2, "num_classes": 4, "T": 2,
          "in_channels": 3 if variant != "dvs" else 2, **kw}
    return Spikformer(**kw)


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_conformance(name):
    """Authors' weights loaded by name: eval/train logits and every used parameter's grad match."""
    path = os.path.join(GOLDEN, name + ".pt")
    res = check_file(path)
    assert res.passed, res.line()
    g = torch.load(path, weights_only=True)
    model = REFERENCE_CTORS[g["model_ctor"]](dict(g["kwargs"]))
    unused = set(g["state_dict"]) - set(model.state_dict())
    assert unused and unused <= set(g["grads_none"])  # only never-used modules are left out
    assert res.n_grads == len(g["grads"]) - len(unused)
    assert sum(p.numel() for p in model.parameters()) == g["n_params"] - sum(g["state_dict"][k].numel() for k in unused)


@pytest.mark.parametrize("name, manifest, kwargs, count", [
    ("spikformer_4_384", "spikformer_c10_4_384", {}, 9_324_730),
    ("spikformer_4_384", "spikformer_c100_4_384", {"num_classes": 100}, 9_359_380),
    ("spikformer_8_384", "spikformer_imagenet_8_384", {}, 16_816_024),
    ("spikformer_8_512", "spikformer_imagenet_8_512", {}, 29_689_384),
    ("spikformer_8_768", "spikformer_imagenet_8_768", {}, 66_338_632),
    ("spikformer_2_256", "spikformer_cifar10dvs_2_256", {}, 2_566_666),
    ("spikformer_2_256", "spikformer_dvs128_2_256", {"num_classes": 11}, 2_566_923),
])
def test_param_counts_and_published_keys(name, manifest, kwargs, count):
    """Used-parameter counts of the paper; keys/shapes equal the published ones minus the never-used modules."""
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.pretrained_cfg["input_size"][0] == model.in_channels and model.pretrained_cfg["architecture"] == name
    published = _manifest(manifest)
    kept = model.filter_reference_state_dict(published)
    dropped = sorted(set(published) - set(kept))
    assert dropped and all(k in ("pos_embed", "norm.weight", "norm.bias") or ".norm" in k for k in dropped)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == list(kept.items())


def test_filter_keeps_our_keys_and_load_reports_real_mismatches():
    model = _tiny()
    sd = model.state_dict()
    assert model.filter_reference_state_dict(sd) == sd
    bad = dict(sd)
    bad.pop("head.bias")
    bad["block.0.attn.q_lif.v"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="head.bias"):
        load_checkpoint(model, bad)


@pytest.mark.parametrize("pools, size, out", [((0, 0, 1, 1), 32, 8), ((1, 1, 1, 1), 64, 4)])
def test_sps_layout(pools, size, out):
    """CIFAR pools twice (/4), ImageNet and DVS four times (/16); output = spikes + spikes in {0, 1, 2}."""
    torch.manual_seed(0)
    sps = SPS(3, 16, pools)
    y = sps(torch.randn(2, 2, 3, size, size) * 3)
    reset_net(sps)
    assert y.shape == (2, 2, 16, out, out) and sps.downsampling == size // out
    assert set(y.unique().tolist()) <= {0.0, 1.0, 2.0} and y.max() == 2


def test_residual_stream_is_spike_counts():
    """Spike + spike residuals: after L blocks the stream holds integers in [0, 2 + 2L]."""
    torch.manual_seed(0)
    model = _tiny()
    for m in model.modules():  # make everything fire
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.constant_(m.bias, 2.0)
    with torch.no_grad():
        z = model.forward_features(torch.randn(2, 3, 32, 32))
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2 + 2 * 2 and z.max() > 2


def test_input_layouts_and_reset():
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        reset_net(model)
        y_frames = model(x.unsqueeze(1).repeat(1, 2, 1, 1, 1))
        reset_net(model)
        y_again = model(x)
    assert y.shape == (3, 4)
    torch.testing.assert_close(y_frames, y, rtol=0, atol=0)
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)
    dvs = _tiny("dvs").eval()
    with torch.no_grad():
        assert dvs(torch.randint(0, 3, (2, 3, 2, 32, 32)).float()).shape == (2, 4)  # frames bring their own T


def test_variants_layers():
    """Per-folder differences: layer types, q/k/v bias, scale."""
    c, i, d = _tiny("cifar"), _tiny("imagenet"), _tiny("dvs")
    assert isinstance(c.block[0].attn.q_linear, torch.nn.Linear) and c.block[0].attn.q_linear.bias is not None
    assert isinstance(c.block[0].mlp.fc1_linear, torch.nn.Linear)
    assert isinstance(i.block[0].attn.q_conv, torch.nn.Conv1d) and i.block[0].attn.q_conv.bias is None
    assert isinstance(i.block[0].mlp.fc1_conv, torch.nn.Conv2d)
    assert isinstance(d.block[0].mlp.fc1_conv, torch.nn.Conv1d)
    assert (c.block[0].attn.scale, i.block[0].attn.scale, d.block[0].attn.scale) == (0.125, 0.125, 0.25)
    assert c.block[0].attn.x_lif is None and c.block[0].attn.proj_lif is not None


def test_neuron_kwargs_reach_every_neuron():
    model = _tiny(neuron="if", v_reset="soft", v_threshold=0.9)
    neurons = dict(spiking_modules(model))
    # SPS: 4 stages + rpe; per block: q, k, v, attn, proj + 2 MLP
    assert len(neurons) == 5 + 2 * 7
    assert all(isinstance(n, sj_neuron.IFNode) and n.v_reset is None for n in neurons.values())
    assert {k: n.v_threshold for k, n in neurons.items() if n.v_threshold != 0.9} == {
        "block.0.attn.attn_lif": 0.5, "block.1.attn.attn_lif": 0.5}
    lif = _tiny(tau=4.0)
    assert all(isinstance(n, sj_neuron.LIFNode) and n.tau == 4.0 for _, n in spiking_modules(lif))


def test_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        _tiny(num_heads=3)
    with pytest.raises(ValueError, match="unknown Spikformer variant"):
        _tiny("cifar100")
    with pytest.raises(ValueError, match="multiple of 8"):
        _tiny(embed_dims=36, num_heads=4)
    with pytest.raises(TypeError, match="mlp_ratio"):
        timm.create_model("spikformer_4_384", mlp_ratio=4)
    with pytest.raises(ValueError, match="drop_path_rate"):
        timm.create_model("spikformer_8_384", drop_path_rate=0.2)
    with pytest.raises(ValueError, match="unsupported .* reference kwargs"):
        REFERENCE_CTORS["cifar10/model.py::Spikformer"](dict(embed_dims=64, num_heads=4, mlp_ratios=4, depths=1, foo=1))
    with pytest.raises(ValueError, match="in_chans=2"):
        _tiny()(torch.randn(1, 2, 32, 32))


@pytest.mark.parametrize("variant", ["cifar", "imagenet"])
def test_batch_invariance(variant):
    """A sample's eval logits do not depend on the rest of the batch (a bug class
    reported against the published QKFormer code)."""
    torch.manual_seed(0)
    model = _tiny(variant, depths=1).eval()
    assert_batch_invariant(model, torch.randn(8, 3, 32, 32))


def test_authors_checkpoint_layout_loads():
    """A ``.pth.tar``-style dict with every published key (LayerNorms, pos_embed, norm included) loads strictly."""
    published = _manifest("spikformer_cifar10dvs_2_256")
    ckpt = {"epoch": 95,
            "state_dict": {k: torch.full(s, 0.5) if s.numel() else torch.tensor(3) for k, s in published.items()}}
    model = timm.create_model("spikformer_2_256")
    load_checkpoint(model, ckpt)
    assert torch.equal(model.block[1].mlp.fc2_conv.weight, torch.full((256, 1024, 1), 0.5))
