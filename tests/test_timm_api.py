"""Every registered model behaves like a timm model: registered config, classifier reset, pre-logits,
features, ``in_chans``, grad checkpointing, and a stateless forward (``stateful=True`` opts out).

The checks follow timm's own model tests (default cfgs, forward_features/forward_head, features_only,
forward_intermediates) on small variants built through ``timm.create_model`` with size kwargs.
"""
import pytest
import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg

from models import list_our_models, reset_net
from models.common import SpikingModel
from models.factory import family_modules

MODELS = list_our_models()
SIZE = 16  # input side of the small variants (every downsampling divides it)


def _small_kwargs(name: str) -> dict:
    """Size kwargs that make ``name`` fast on CPU but keep its structure."""
    if name.startswith("spikformer"):
        return dict(embed_dims=16, num_heads=2, depths=2, T=1)
    if "resnet" in name:  # the variant's layer layout (strides, max-pools) at widths 8, 16, ...
        with torch.device("meta"):
            specs = timm.create_model(name).layer_specs
        return dict(T=1, stem_width=8, layers=[(8 * 2 ** i, 1, s.stride, s.max_pool) for i, s in enumerate(specs)])
    kwargs = dict(embed_dims=16, num_heads=2, T=1)
    if "_10_" in name:
        kwargs["depths"] = (1, 1, 1)
    return kwargs


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**_small_kwargs(name), **kwargs})


def batch(model, n: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    channels = model.pretrained_cfg["input_size"][0]
    return torch.randn(n, channels, SIZE, SIZE) * 2


def fire(model) -> None:
    """BN biases of 2 so that every layer fires in eval mode (comparisons are not void)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.constant_(m.bias, 2.0)


def test_every_family_is_registered_with_configs():
    assert {timm.models.get_pretrained_cfg(n).architecture for n in MODELS} == set(MODELS)
    assert sorted(timm.list_models(module=family_modules())) == MODELS
    assert len(MODELS) == 18
    # the released ImageNet weights (models.pretrained) are the only pretrained ones
    assert timm.list_models(pretrained=True, module=family_modules()) == [
        "maxformer_10_384.t4_in1k", "maxformer_10_512.t1_in1k", "maxformer_10_512.t4_in1k",
        "maxformer_10_768.t1_in1k", "maxformer_10_768.t4_in1k", "ms_qkformer_10_384.t4_in1k",
        "ms_qkformer_10_768.t1_in1k"]


@pytest.mark.parametrize("name", MODELS)
def test_registered_config_matches_the_model(name):
    cfg = get_pretrained_cfg(name)
    assert cfg is not None and cfg.architecture == name
    with torch.device("meta"):
        model = timm.create_model(name)
    state = model.state_dict()
    assert cfg.first_conv + ".weight" in state and state[cfg.first_conv + ".weight"].dim() == 4  # a real conv
    assert cfg.first_conv + ".weight" == next(k for k, v in state.items() if v.dim() == 4)
    assert cfg.classifier + ".weight" in state and model.get_classifier() is model.get_submodule(cfg.classifier)
    channels, height, width = cfg.input_size
    assert len(cfg.mean) == len(cfg.std) == channels
    last = model.feature_info[-1]
    assert cfg.pool_size == (height // last["reduction"], width // last["reduction"])
    assert last["num_chs"] == model.num_features == model.head_hidden_size
    assert resolve_model_data_config(model)["input_size"] == cfg.input_size
    assert model.pretrained_cfg["num_classes"] == model.num_classes == cfg.num_classes


@pytest.mark.parametrize("name", [n for n in MODELS if not timm.models.get_pretrained_cfg(n).has_weights])
def test_pretrained_true_without_released_weights_points_to_load_checkpoint(name):
    with pytest.raises(ValueError, match=r"no released weights .*maxformer_10_768\.t4_in1k.*utils.training.checkpoint"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_pure_in_train_mode_unless_stateful(name):
    """Two calls on the same input give the same logits without reset_net (train mode, BN batch
    statistics); with ``stateful`` the membranes carry over until reset_net."""
    model = small(name).train()
    x = batch(model)
    with torch.no_grad():
        first, second = model(x), model(x)
        assert first.std(0).max() > 0, "all samples give the same logits: the comparison would be void"
        assert torch.equal(first, second)
        model.stateful = True
        carried = model(x)
        reset_net(model)
        again = model(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, carried), "membranes kept across calls must change the output"


def test_stateful_is_a_model_kwarg():
    model = small("maxformer_cifar", stateful=True)
    x = batch(model)
    with torch.no_grad():
        assert model.stateful and not torch.equal(model(x), model(x))
    assert not small("maxformer_cifar").stateful


@pytest.mark.parametrize("name", MODELS)
def test_timm_head_conventions(name):
    """timm's default-cfg test: unpooled features, pre-logits, classifier removal and replacement."""
    model = small(name).eval()
    fire(model)
    x = batch(model)
    reduction = model.feature_info[-1]["reduction"]
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        assert feats.shape == (3, model.num_features, SIZE // reduction, SIZE // reduction, model.T)  # NCHW + T
        assert torch.equal(model.forward_head(feats), logits)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (3, model.head_hidden_size)
        torch.testing.assert_close(model.get_classifier()(pre), logits, rtol=1e-5, atol=1e-5)

        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        assert torch.equal(model(x), pre)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == feats.shape[:4] and torch.equal(unpooled, feats.mean(-1))
        model.reset_classifier(7, "avg")
        assert model(x).shape == (3, 7) and model.get_classifier().out_features == 7

    created = small(name, num_classes=0)
    assert created.num_classes == 0 and created.eval()(x).shape == (3, created.head_hidden_size)
    assert small(name, num_classes=0, global_pool="").eval()(x).dim() == 4
    with pytest.raises(ValueError, match="global_pool='' needs num_classes=0"):
        model.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool"):
        small(name, global_pool="max")


@pytest.mark.parametrize("name", MODELS)
def test_features_only_and_forward_intermediates(name):
    model = small(name, T=2).eval()
    fire(model)
    x = batch(model, 2)
    info = model.feature_info
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        raw = model.forward_intermediates(x, output_fmt="TNCHW", intermediates_only=True)
        assert torch.equal(final, model.forward_features(x))
        assert len(maps) == len(raw) == len(info) >= 2
        for f, r, m in zip(info, raw, maps):
            side = SIZE // f["reduction"]
            assert m.shape == (2, f["num_chs"], side, side)  # timm's NCHW
            assert r.shape == (model.T, 2, f["num_chs"], side, side)  # raw [T,B,C,H,W]
            assert torch.equal(m, r.mean(0))  # time steps reduced by their mean
        assert sum(m.abs().sum() for m in maps) > 0
        last = model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], maps[-1])

        extractor = small(name, T=2, features_only=True).eval()
        fire(extractor)
        feats = extractor(x)
    assert extractor.feature_info.channels() == [f["num_chs"] for f in info]
    assert extractor.feature_info.reduction() == [f["reduction"] for f in info]
    assert [f.shape for f in feats] == [m.shape for m in maps]
    picked = small(name, T=2, features_only=True, out_indices=(0,)).eval()
    with torch.no_grad():
        assert [f.shape for f in picked(x)] == [maps[0].shape]
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="norm"):
        model.forward_intermediates(x, norm=True)


@pytest.mark.parametrize("name", MODELS)
def test_in_chans_is_timms_name_and_reaches_the_data_config(name):
    model = small(name, in_chans=1).eval()
    cfg = resolve_model_data_config(model)
    assert model.in_chans == model.in_channels == 1
    assert cfg["input_size"][0] == 1 and len(cfg["mean"]) == len(cfg["std"]) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, SIZE, SIZE)).shape == (2, model.num_classes)
    alias = small(name, in_channels=1)
    assert alias.in_chans == 1 and alias.pretrained_cfg["input_size"] == model.pretrained_cfg["input_size"]
    with pytest.raises(ValueError, match="in_chans=1 and in_channels=3 disagree"):
        small(name, in_chans=1, in_channels=3)


@pytest.mark.parametrize("name", ["maxformer_cifar", "ms_qkformer_dvs", "max_resnet18", "spikformer_4_384"])
def test_set_grad_checkpointing_keeps_values_and_gradients(name):
    plain, ckpt = small(name).train(), small(name).train()
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing
    x = batch(plain)
    grads = []
    for model in (plain, ckpt):
        out = model(x)
        (out * torch.arange(out.shape[1])).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()):  # BN statistics updated once
        assert torch.equal(a, b)
    ckpt.set_grad_checkpointing(False)
    assert not ckpt.grad_checkpointing and not any("forward" in vars(m) for m in ckpt.modules())


def test_every_family_shares_the_api():
    assert all(isinstance(small(n), SpikingModel) for n in ("maxformer_cifar", "ms_resnet18", "spikformer_2_256"))


FAMILIES = ("maxformer_cifar", "ms_qkformer_10_384", "spikformer_4_384", "max_resnet18")


@pytest.mark.parametrize("name", FAMILIES)
def test_no_weight_decay_is_what_the_recipe_already_excludes(name):
    """no_weight_decay() names the 1-D parameters: the optimizer groups of the training recipe are unchanged."""
    from timm.optim import create_optimizer_v2

    model = small(name)
    nwd = model.no_weight_decay()
    assert nwd and all(p.ndim <= 1 for n, p in model.named_parameters() if n in nwd)
    names = {id(p): n for n, p in model.named_parameters()}

    def groups(m):
        opt = create_optimizer_v2(m, opt="adamw", lr=1e-3, weight_decay=0.05, filter_bias_and_bn=True)
        return sorted((g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups)

    with_method = groups(model)
    type(model).no_weight_decay, saved = (lambda self: set()), type(model).no_weight_decay
    try:
        assert groups(model) == with_method
    finally:
        type(model).no_weight_decay = saved
    assert set(dict(with_method)[0.0]) == nwd


@pytest.mark.parametrize("name", FAMILIES)
def test_group_matcher_orders_stem_blocks_head_for_layer_decay(name):
    from timm.models import group_parameters
    from timm.optim import create_optimizer_v2

    model = small(name)
    fine = group_parameters(model, model.group_matcher(coarse=False))
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    everything = [n for n, _ in model.named_parameters()]
    assert sorted(sum(fine.values(), [])) == sorted(everything) == sorted(sum(coarse.values(), []))
    head = model.get_classifier()
    assert {id(model.get_parameter(n)) for n in fine[len(fine) - 1]} == {id(p) for p in head.parameters()}
    has_stem = model.group_matcher()["stem"] is not None  # Max-Former's first stage starts with its embedding
    assert len(coarse) == has_stem + len(model.feature_info) + 1 <= len(fine)
    units = sum(len(s) for s in model._stages())
    assert len(fine) >= units + 1
    opt = create_optimizer_v2(model, opt="adamw", lr=1.0, weight_decay=0.05, layer_decay=0.65)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) == len(fine) and max(scales) == 1.0
    assert min(scales) == pytest.approx(0.65 ** (len(fine) - 1))
    first = next(g for g in opt.param_groups if id(model.get_parameter(fine[0][0])) in map(id, g["params"]))
    assert first["lr_scale"] == min(scales)


@pytest.mark.parametrize("name", FAMILIES)
def test_prune_intermediate_layers_keeps_what_forward_intermediates_needs(name):
    model = small(name, T=2).eval()
    fire(model)
    x = batch(model, 2)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
    n = len(maps)
    assert model.prune_intermediate_layers(indices=[0, 1], prune_head=True) == [0, 1]
    assert len(model.feature_info) == 2 and model.num_classes == 0
    before = sum(1 for _ in model.parameters())
    with torch.no_grad():
        final, kept = model.forward_intermediates(x)
        pooled = model(x)
    assert len(kept) == 2 < n or name.startswith("spikformer") and len(kept) == 2
    for a, b in zip(kept, maps[:2]):
        assert torch.equal(a, b)
    assert pooled.shape == (2, model.feature_info[-1]["num_chs"])
    assert before < sum(1 for _ in small(name, T=2).parameters())


def test_prune_keeping_a_head_that_no_longer_fits_is_refused():
    model = small("maxformer_cifar")
    with pytest.raises(ValueError, match="prune_head=True"):
        model.prune_intermediate_layers(indices=[0], prune_head=False)
    spikformer = small("spikformer_4_384")
    assert spikformer.prune_intermediate_layers(indices=[0], prune_head=False) == [0]
    assert spikformer(batch(spikformer)).shape == (3, spikformer.num_classes)
