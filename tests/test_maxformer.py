"""Max-Former / MS-QKFormer: parameter counts, published state_dict keys, input layouts, batch
invariance, neuron settings, every ablation row of the paper's Tables 4 and 7, error messages."""
import os

import pytest
import timm
import torch

import models
from models.embeddings import create_embedding, embedding_names
from models.maxformer import VARIANTS, SpikingTransformer
from models.published import REFERENCE_CTORS
from models.neurons import reset_net, spiking_modules

MANIFESTS = os.path.join(os.path.dirname(__file__), "data", "golden", "manifests")

# name, kwargs, exact parameter count (as the published code counts them), manifest (if any)
PARAM_COUNTS = [
    ("maxformer_cifar", {}, 6_568_282, "cifar_max_former_c10"),
    ("maxformer_cifar", {"num_classes": 100}, 6_602_932, "cifar_max_former_c100"),
    ("ms_qkformer_cifar", {}, 6_706_234, "cifar_ms_qkformer_c10"),
    ("ms_qkformer_cifar", {"num_classes": 100}, 6_740_884, "cifar_ms_qkformer_c100"),
    ("maxformer_dvs", {}, 1_455_626, "event_max_former_c10"),
    ("maxformer_dvs", {"num_classes": 11}, 1_455_883, "event_max_former_c11"),
    ("maxformer_dvs", {"mlp_ratios": 4}, 1_950_602, "event_max_former_c10_mlp4"),
    ("ms_qkformer_dvs", {}, 1_504_138, "event_ms_qkformer_c10"),
    ("maxformer_10_384", {}, 16_237_240, "imagenet_maxformer_10_384"),
    ("maxformer_10_512", {}, 28_653_480, "imagenet_maxformer_10_512"),
    ("maxformer_10_768", {}, 63_992_200, "imagenet_maxformer_10_768"),
    ("ms_qkformer_10_384", {}, 16_473_688, "imagenet_ms_qkformer_10_384"),
    ("ms_qkformer_10_512", {}, 29_079_336, "imagenet_ms_qkformer_10_512"),
    ("ms_qkformer_10_768", {}, 64_962_760, "imagenet_ms_qkformer_10_768"),
]


def read_manifest(name):
    with open(os.path.join(MANIFESTS, name + ".txt")) as f:
        return [(k, list(eval(shape))) for k, shape in (line.rstrip("\n").split("\t") for line in f if line.strip())]


def tiny(**kwargs):
    """A cheap Max-Former-CIFAR layout (E=32, T=1) unless overridden."""
    cfg = dict(embed_dims=32, num_heads=2, T=1, num_classes=10)
    cfg.update(kwargs)
    return SpikingTransformer(**cfg)


@pytest.mark.parametrize("name,kwargs,count,manifest", PARAM_COUNTS,
                         ids=[f"{n}-{m}" for n, _, _, m in PARAM_COUNTS])
def test_param_count_and_published_state_dict(name, kwargs, count, manifest):
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == read_manifest(manifest)  # same keys, shapes and order: checkpoints load by name


def test_every_registered_variant_is_covered():
    assert set(VARIANTS) == {n for n, *_ in PARAM_COUNTS}
    assert set(VARIANTS) <= set(timm.list_models())


def test_variant_defaults_follow_the_paper():
    with torch.device("meta"):
        dvs = timm.create_model("maxformer_dvs")
        img = timm.create_model("ms_qkformer_10_768", T=1, num_classes=100)
    assert dvs.T == 16 and dvs.dims == (128, 256) and dvs.head_order == "mean_then_linear"
    assert img.T == 1 and img.num_classes == 100 and img.head_order == "linear_then_mean"
    assert img.stage3[0].attn.num_heads == 12 and img.stage1[0].attn.num_heads == 12  # E // 64
    assert dvs.pretrained_cfg["input_size"] == (2, 128, 128)


def test_reference_registry_functions_build_the_published_models():
    with torch.device("meta"):
        m = REFERENCE_CTORS["imagenet/max_former.py::maxformer_10_384"]({"T": 4})
    assert sum(p.numel() for p in m.parameters()) == 16_237_240 and m.T == 4


@torch.no_grad()
def test_output_shapes_both_layouts():
    img = tiny(T=2).eval()
    assert img(torch.randn(3, 3, 16, 16)).shape == (3, 10)
    reset_net(img)
    ev = tiny(embeds=("max_plus", "max"), mixers=("dwc3", "ssa"), depths=(1, 1), in_channels=2, T=2,
              num_heads=4).eval()
    assert ev(torch.rand(2, 2, 2, 32, 32)).shape == (2, 10)  # [B, T, C, H, W]
    reset_net(ev)
    assert ev(torch.rand(2, 2, 32, 32)).shape == (2, 10)  # a static frame repeated over T


def calibrate(model, x):
    """BN running stats = batch stats of ``x`` (the golden warm-up), so eval-mode neurons fire."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    model.train()(x)
    reset_net(model)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


@torch.no_grad()
@pytest.mark.parametrize("config", ["maxformer", "ms_qkformer", "event"])
def test_batch_invariance(config):
    """A sample's eval output does not depend on the rest of the batch (a bug class
    reported against the published QKFormer code)."""
    torch.manual_seed(0)
    if config == "maxformer":
        model, x = tiny(T=2), torch.randn(8, 3, 16, 16)
    elif config == "ms_qkformer":
        model = tiny(T=2, embeds=("orig", "1max", "1max"), mixers=("qka", "qka", "ssa"))
        x = torch.randn(8, 3, 16, 16)
    else:
        model = tiny(T=2, embeds=("max_plus", "1max"), mixers=("qka", "ssa"), depths=(1, 1), in_channels=2,
                     num_heads=4)
        x = torch.randint(0, 4, (8, 2, 2, 32, 32)).float()
    calibrate(model, x)
    feats = model.forward_features(x)
    batch = model.forward_head(feats)
    reset_net(model)
    alone_feats = model.forward_features(x[3:4])
    alone = model.forward_head(alone_feats)
    reset_net(model)
    assert batch.abs().sum() > 0, "silent head: the comparison would be void"
    torch.testing.assert_close(alone_feats[0], feats[3], atol=1e-5, rtol=0)  # [B,C,H,W,T]
    torch.testing.assert_close(alone[0], batch[3], atol=1e-6, rtol=0)


@torch.no_grad()
def test_forward_is_stateless_unless_stateful():
    """Every call starts from fresh membranes; stateful=True carries them over until reset_net."""
    x = torch.randn(2, 3, 16, 16)
    model = calibrate(tiny(T=2), x)
    first = model.forward_features(x)
    assert torch.equal(model.forward_features(x), first)
    model.stateful = True
    stale = model.forward_features(x)  # membranes carried over from the previous call
    reset_net(model)
    fresh = model.forward_features(x)
    assert torch.equal(first, fresh)
    assert not torch.equal(first, stale), "state carried over must change the output (else this test is void)"


def test_neuron_kwargs_reach_every_neuron():
    base = tiny(embeds=("orig", "1max", "max"), mixers=("qka", "dwc3", "ssa"))
    n_neurons = len(list(spiking_modules(base)))
    attn = {"stage1.0.attn.attn_lif", "stage3.0.attn.attn_lif", "stage3.1.attn.attn_lif"}

    m = tiny(embeds=("orig", "1max", "max"), mixers=("qka", "dwc3", "ssa"), neuron="if", v_threshold=0.8,
             v_reset="soft", detach_reset=False, surrogate="atan", alpha=2.0)
    neurons = dict(spiking_modules(m))
    assert len(neurons) == n_neurons > 20
    assert {type(n).__name__ for n in neurons.values()} == {"IFNode"}
    assert {n.v_reset for n in neurons.values()} == {None}
    assert {n.detach_reset for n in neurons.values()} == {False}
    assert {type(n.surrogate_function).__name__ for n in neurons.values()} == {"ATan"}
    assert {n.surrogate_function.alpha for n in neurons.values()} == {2.0}
    assert {k for k, n in neurons.items() if n.v_threshold == 0.5} == attn
    assert {n.v_threshold for k, n in neurons.items() if k not in attn} == {0.8}

    lif = dict(spiking_modules(tiny(tau=3.0)))
    assert {type(n).__name__ for n in lif.values()} == {"LIFNode"} and {n.tau for n in lif.values()} == {3.0}
    with torch.device("meta"):
        created = timm.create_model("maxformer_cifar", neuron="if")
    assert {type(n).__name__ for _, n in spiking_modules(created)} == {"IFNode"}


# ------------------------------------------------------------------------- ablation rows
# Paper naming -> stage specs. "Orig" in stage 2/3 is the downsampling Embed-Orig ('orig_later',
# the published cifar Embed_Orig_later) so every row keeps the /2 per-stage token grids; "Orig" in
# stage 1 of the event rows is 'orig_plus' (the /8 Max+ layout with strided convs).
def _emb(row, event=False):
    first = "orig_plus" if event else "orig"
    return tuple({"Orig": first if i == 0 else "orig_later", "Max": "max", "1Max": "1max",
                  "Max+": "max_plus"}[e] for i, e in enumerate(row.split("/")))


def _mix(row):
    names = {"Identity": "identity", "SSA": "ssa", "SDSA": "sdsa", "Avg-Pool": "avg", "Max-Pool": "max"}
    out = []
    for m in row.split("/"):
        if m.startswith("SSA+DWC-"):
            out.append("ssa_dwc" + m.split("-")[1])
        elif m.startswith("DWC-"):
            out.append("dwc" + m.split("-")[1])
        else:
            out.append(names[m])
    return tuple(out)


TABLE4_C100 = [("Orig/Max/Max", "Identity/DWC-3/SSA"), ("Orig/Orig/Orig", "Identity/DWC-3/SSA"),
               ("Orig/Max/Orig", "Identity/DWC-3/SSA"), ("Orig/Max/Max", "Identity/Identity/SSA"),
               ("Orig/Max/Max", "Identity/DWC-5/SSA"), ("Orig/Max/Max", "DWC-7/DWC-5/SSA"),
               ("Orig/Max/Max", "SSA/SSA/SSA"), ("Orig/Orig/Orig", "SSA/SSA/SSA")]
TABLE4_DVS = [("Max+/Max", "DWC-3/SSA"), ("Orig/Orig", "DWC-3/SSA"), ("Orig/Max", "DWC-3/SSA"),
              ("Max+/Max", "DWC-1/SSA"), ("Max+/Max", "DWC-5/SSA"), ("Max+/Max", "DWC-7/SSA"),
              ("Max+/Max", "SSA/SSA"), ("Orig/Orig", "SSA/SSA")]
TABLE7 = [("Orig/Orig/Orig", "Avg-Pool/Avg-Pool/Avg-Pool"), ("Orig/Orig/Orig", "Max-Pool/Max-Pool/Max-Pool"),
          ("Orig/Orig/Max", "Identity/Identity/Identity"), ("Orig/Max/Max", "Identity/Identity/Identity"),
          ("Orig/Max/Max", "Avg-Pool/Avg-Pool/Avg-Pool"), ("Orig/Max/Max", "Max-Pool/Max-Pool/Max-Pool"),
          ("Orig/Max/Max", "Identity/Max-Pool/Identity"), ("Orig/Max/Max", "Identity/Identity/Max-Pool"),
          ("Orig/Max/Max", "SSA/SSA/SSA"), ("Orig/Max/Max", "DWC-3/DWC-5/SSA"),
          ("Orig/Max/Max", "DWC-5/DWC-3/SSA"), ("Orig/Max/Max", "DWC-5/DWC-7/SSA"),
          ("Orig/Max/Max", "DWC-7/DWC-5/SSA"), ("Orig/Max/Max", "DWC-3/DWC-3/SSA"),
          ("Orig/Max/Max", "Identity/DWC-3/SSA"), ("Orig/Max/Max", "SSA+DWC-5/SSA+DWC-5/SSA+DWC-5"),
          ("Orig/Orig/Orig", "SSA+DWC-3/SSA+DWC-3/SSA+DWC-3"), ("Orig/Orig/Orig", "SSA+DWC-5/SSA+DWC-5/SSA+DWC-5"),
          ("1Max/Max/Max", "SSA/SSA/SSA"), ("Max/Max/Max", "SSA/SSA/SSA"), ("Orig/1Max/1Max", "SSA/SSA/SSA"),
          ("1Max/1Max/1Max", "SSA/SSA/SSA"), ("Orig/Max/Max", "SDSA/SDSA/SDSA"),
          ("Orig/1Max/1Max", "SDSA/SDSA/SDSA")]
ROWS = ([("table4-c100", e, m) for e, m in TABLE4_C100] + [("table4-dvs", e, m) for e, m in TABLE4_DVS]
        + [("table7", e, m) for e, m in TABLE7])


@torch.no_grad()
@pytest.mark.parametrize("table,embeds,mixers", ROWS, ids=[f"{t}:{e}:{m}" for t, e, m in ROWS])
def test_ablation_row_builds_and_runs(table, embeds, mixers):
    embeds, mixers = _emb(embeds, event=table == "table4-dvs"), _mix(mixers)
    if table == "table4-dvs":
        model = SpikingTransformer(embeds=embeds, mixers=mixers, depths=(1, 1), embed_dims=32, mlp_ratios=1,
                                   num_heads=2, in_channels=2, T=1, num_classes=10)
        x = torch.randint(0, 3, (1, 1, 2, 128, 128)).float()
    else:
        model = SpikingTransformer(embeds=embeds, mixers=mixers, depths=(1, 1, 2), embed_dims=32, num_heads=2,
                                   T=1, num_classes=100)
        x = torch.randn(1, 3, 32, 32)
    y = model.eval()(x)
    assert y.shape == (1, model.num_classes) and torch.isfinite(y).all()
    assert model.embeds == embeds
    for i, name in enumerate(mixers):
        assert [b.mixer_name for b in getattr(model, f"stage{i + 1}")] == [name] * model.depths[i]


# ------------------------------------------------------------------------- embeddings
@torch.no_grad()
@pytest.mark.parametrize("name", ["orig", "orig_later", "orig_plus", "orig_imagenet", "max", "max_plus", "1max",
                                  "1max_imagenet", "qk_init", "avg"])
def test_embedding_downsampling(name):
    emb = create_embedding(name, 4, 16).eval()
    y = emb(torch.randn(2, 1, 4, 32, 32))
    factor = {"orig": 1, "orig_later": 2, "orig_plus": 8, "max": 2, "1max": 2, "1max_imagenet": 2, "avg": 2,
              "orig_imagenet": 4, "qk_init": 4, "max_plus": 8}[name]
    assert y.shape == (2, 1, 16, 32 // factor, 32 // factor)


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,message", [
    (dict(mixers=("identity", "dwc3", "sssa")), r"unknown token mixer 'sssa'.*Did you mean 'ssa'"),
    (dict(embeds=("orig", "maxx", "max")), r"unknown patch embedding 'maxx'.*Did you mean 'max'"),
    (dict(mixers=("identity", "ssa")), r"mixers has 2 entries but embeds has 3"),
    (dict(depths=(1, 1)), r"depths has 2 entries but there are 3 stages"),
    (dict(mlp_ratios=(4, 4)), r"mlp_ratios has 2 entries"),
    (dict(embed_dims=3), r"embed_dims=3 is too small for 3 stages"),
    (dict(num_heads=(1, 1, 3)), r"stage 3: width 32 is not divisible by num_heads=3"),
    (dict(head="linear"), r"head must be one of"),
    (dict(weight_init="xavier"), r"weight_init must be one of"),
    (dict(neuron="plfi"), r"unknown neuron 'plfi'.*Did you mean: plif"),
    (dict(embeds="orig"), r"one name per stage"),
])
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_clear_errors_for_inputs_and_factory():
    model = tiny(T=2)
    assert model(torch.randn(1, 3, 3, 32, 32)).shape == (1, 10)  # frames bring their own T
    with pytest.raises(ValueError, match=r"expects \[B,C,H,W\] images"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['taux'\]"):
        tiny(taux=2.0)
    with pytest.raises(ValueError, match="load_checkpoint"):
        timm.create_model("maxformer_cifar", pretrained=True)
    with pytest.raises(ValueError, match="needs embed_dims >= 8"):
        create_embedding("max_plus", 2, 4)
    assert "max_plus" in embedding_names() and models.maxformer is not None
