"""Token mixers, spiking MLP and block against independent functional re-implementations.

The references below use their own LIF loop (charge ``H = V + (X - V)/tau``, fire on
``H >= V_th``, hard reset to 0) and plain tensor ops, written from the published op order.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mixer_hub import SDSA, SSA, create_mixer, is_attention_mixer
from models.blocks import Block, SpikingMLP
from models.neurons import NeuronConfig, reset_net, spiking_modules

T, B, C, H, W = 2, 2, 16, 5, 6


def lif(x, v_th=1.0, tau=2.0):
    """Reference multi-step LIF over dim 0."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = (h - v_th >= 0).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def bn(z, m):
    """Eval-mode BatchNorm with ``m``'s statistics over dim 1."""
    shape = [1, -1] + [1] * (z.dim() - 2)
    return ((z - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
            * m.weight.view(shape) + m.bias.view(shape))


def randomize(module, seed=0):
    """Random BN statistics/affine so neurons fire at a useful rate; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 1.0)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.25)
    return module.eval()


@pytest.fixture
def x():
    return torch.randn(T, B, C, H, W, generator=torch.Generator().manual_seed(1)) * 2


def conv1d_bn(s, conv, norm):  # s: [T,B,C,N]
    z = torch.einsum("oc,tbcn->tbon", conv.weight[..., 0], s)
    if conv.bias is not None:
        z = z + conv.bias.view(1, 1, -1, 1)
    return bn(z.flatten(0, 1), norm).reshape(z.shape)


@torch.no_grad()
@pytest.mark.parametrize("heads", [1, 4])
def test_ssa_matches_functional_reference(x, heads):
    m = randomize(SSA(C, num_heads=heads))
    y = m(x)
    reset_net(m)
    s = lif(x).flatten(3)
    q, k, v = (lif(conv1d_bn(s, getattr(m, f"{p}_conv"), getattr(m, f"{p}_bn"))) for p in "qkv")
    d = C // heads

    def split(z):  # channel c = head*d + j
        return z.reshape(T, B, heads, d, -1).transpose(3, 4)

    pre = ((split(q) @ split(k).transpose(-2, -1) @ split(v)) * 0.125).transpose(3, 4).reshape(T, B, C, -1)
    out = lif(pre, v_th=0.5)
    ref = conv1d_bn(out, m.proj_conv, m.proj_bn).reshape(x.shape) + x
    assert 0 < out.mean() < 1, "attention branch degenerate: the test would not exercise it"
    assert not torch.equal(out, lif(pre, v_th=1.0)), "the 0.5 attention threshold must matter here"
    assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()


@torch.no_grad()
def test_ssa_matmul_orders_are_bitwise_equal(x):
    a = randomize(SSA(C, num_heads=4, matmul_order="kv_first"))
    b = SSA(C, num_heads=4, matmul_order="qk_first").eval()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


@torch.no_grad()
def test_ssa_spikformer_options(x):
    m = SSA(C, num_heads=4, layer="linear", qkv_bias=True, input_lif=False, proj_lif=True, residual=False,
            scale=0.25)
    keys = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith(("running_mean", "running_var",
                                                                                  "num_batches_tracked"))}
    assert keys["q_linear.weight"] == (C, C) and keys["q_linear.bias"] == (C,)
    assert keys["proj_linear.bias"] == (C,) and "x_lif" not in dict(m.named_modules())
    randomize(m)
    y = m(x)
    assert set(y.unique().tolist()) <= {0.0, 1.0}, "proj_lif output must be spikes (no residual)"
    conv = SSA(C, num_heads=4, qkv_bias=True, input_lif=False, proj_lif=True, residual=False, scale=0.25).eval()
    sd = {k.replace("_linear", "_conv"): (v[..., None] if k.endswith("linear.weight") else v)
          for k, v in m.state_dict().items()}
    conv.load_state_dict(sd)
    reset_net(m)
    assert torch.allclose(conv(x), m(x))


@torch.no_grad()
def test_qka_matches_functional_reference(x):
    heads = 4
    m = randomize(create_mixer("qka", C, num_heads=heads), seed=3)
    y = m(x)
    s = lif(x).flatten(3)
    q = lif(conv1d_bn(s, m.q_conv, m.q_bn)).reshape(T, B, heads, C // heads, -1)
    k = lif(conv1d_bn(s, m.k_conv, m.k_bn)).reshape(T, B, heads, C // heads, -1)
    mask = lif(q.sum(3, keepdim=True), v_th=0.5)
    ref = conv1d_bn((mask * k).reshape(T, B, C, -1), m.proj_conv, m.proj_bn).reshape(x.shape) + x
    assert 0 < mask.mean() < 1
    assert torch.allclose(y, ref, atol=1e-5)
    assert "v_conv" not in m.state_dict()


@torch.no_grad()
def test_sdsa_matches_functional_reference(x):
    heads = 2
    m = randomize(SDSA(C, num_heads=heads), seed=4)
    y = m(x)
    s = lif(x)

    def branch(p):
        conv, norm = getattr(m, f"{p}_conv"), getattr(m, f"{p}_bn")
        z = F.conv2d(s.flatten(0, 1), conv.weight)
        return lif(bn(z, norm).reshape(s.shape))

    q, k, v = (branch(p).flatten(3).transpose(2, 3).reshape(T, B, H * W, heads, C // heads).transpose(2, 3)
               for p in "qkv")
    mask = lif((k * v).sum(-2, keepdim=True), v_th=0.5)  # [T,B,h,1,d]: per channel, over tokens
    out = (q * mask).transpose(3, 4).reshape(T, B, C, H, W)
    z = F.conv2d(out.flatten(0, 1), m.proj_conv.weight, m.proj_conv.bias)
    ref = bn(z, m.proj_bn).reshape(x.shape) + x
    assert 0 < mask.mean() < 1
    assert torch.allclose(y, ref, atol=1e-5)
    reset_net(m)
    eroded = SDSA(C, num_heads=heads, erode=True).eval()
    eroded.load_state_dict(m.state_dict())
    assert eroded(x).shape == x.shape and not torch.equal(eroded(x), y)


@torch.no_grad()
@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
def test_dwc_any_odd_kernel(x, k):
    m = randomize(create_mixer(f"dwc{k}", C), seed=k)
    conv, norm = ("conv5", "conv5_bn") if k == 7 else ("conv", "conv_bn")  # published key names
    assert tuple(m.state_dict()[f"{conv}.weight"].shape) == (C, 1, k, k)
    z = F.conv2d(lif(x).flatten(0, 1), getattr(m, conv).weight, getattr(m, conv).bias, padding=k // 2, groups=C)
    ref = bn(z, getattr(m, norm)).reshape(x.shape) + x
    assert torch.allclose(m(x), ref, atol=1e-5)


@torch.no_grad()
def test_pool_and_identity_mixers(x):
    assert create_mixer("identity", C)(x) is x
    mx = create_mixer("max", C)(x)
    assert torch.equal(mx, F.max_pool2d(x.flatten(0, 1), 3, 1, 1).reshape(x.shape))  # replaces x, no add-back
    av = create_mixer("avg", C)(x)
    assert torch.allclose(av[..., 0, 0], x[..., :2, :2].mean((-1, -2)))  # count_include_pad=False


@torch.no_grad()
@pytest.mark.parametrize("name", ["ssa_dwc", "ssa_dwc3"])
def test_ssa_dwc(x, name):
    m = randomize(create_mixer(name, C, num_heads=4), seed=5)
    k = 5 if name == "ssa_dwc" else 3
    # published names, directly on the attention module: dwc (depth-wise Conv2d) and dwc_bn
    assert tuple(m.state_dict()["dwc.weight"].shape) == (C, 1, k, k)
    assert [n for n in m.state_dict() if n.startswith("dwc")] == [
        "dwc.weight", "dwc.bias", "dwc_bn.weight", "dwc_bn.bias", "dwc_bn.running_mean", "dwc_bn.running_var",
        "dwc_bn.num_batches_tracked"]
    ssa_part = m.attention(x).reshape(x.shape)
    z = F.conv2d(lif(ssa_part).flatten(0, 1), m.dwc.weight, m.dwc.bias, padding=k // 2, groups=C)
    reset_net(m)
    assert torch.allclose(m(x), bn(z, m.dwc_bn).reshape(x.shape) + x, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("ratio", [1, 4])
def test_mlp_residual_rule(x, ratio):
    m = randomize(SpikingMLP(C, C * ratio), seed=6)
    h = bn(F.conv2d(lif(x).flatten(0, 1), m.fc1_conv.weight, m.fc1_conv.bias), m.fc1_bn)
    h = h.reshape(T, B, -1, H, W)
    if ratio == 1:  # hidden == in: h gets the input, and the output residual adds h, not x
        h = h + x
        identity = h
    else:
        identity = x
    y = bn(F.conv2d(lif(h).flatten(0, 1), m.fc2_conv.weight, m.fc2_conv.bias), m.fc2_bn).reshape(x.shape)
    assert m.hidden_residual == (ratio == 1)
    assert torch.allclose(m(x), y + identity, atol=1e-5)


def test_block_attribute_names_follow_published_keys():
    assert any(k.startswith("attn.q_conv") for k in Block(C, "ssa", num_heads=4).state_dict())
    assert any(k.startswith("attn.q_conv") for k in Block(C, "qka", num_heads=4).state_dict())
    assert any(k.startswith("mixer.conv.") for k in Block(C, "dwc3").state_dict())
    assert all(k.startswith("mlp.") for k in Block(C, "identity").state_dict())


def test_attention_neurons_keep_half_threshold():
    cfg = NeuronConfig(kind="if", v_threshold=2.0)
    for name, attn in [("ssa", "attn_lif"), ("qka", "attn_lif"), ("sdsa", "talking_heads_lif")]:
        m = create_mixer(name, C, num_heads=4, neuron_cfg=cfg)
        thresholds = {n: mod.v_threshold for n, mod in spiking_modules(m)}
        assert thresholds.pop(attn) == 0.5
        assert set(thresholds.values()) == {2.0}, name


def test_mixer_errors():
    with pytest.raises(ValueError, match="unknown token mixer 'ssq'.*Did you mean 'ssa'"):
        create_mixer("ssq", C)
    with pytest.raises(ValueError, match="odd kernel size"):
        create_mixer("dwc4", C)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        create_mixer("ssa", C, num_heads=3)
    with pytest.raises(ValueError, match="matmul_order"):
        SSA(C, num_heads=4, matmul_order="vk")
    with pytest.raises(TypeError, match="scal"):
        create_mixer("ssa", C, num_heads=4, scal=0.25)  # a typo is never swallowed
    assert isinstance(create_mixer("dwc3", C, num_heads=4, attn_v_threshold=0.5), nn.Module)  # model-wide kwargs
    assert is_attention_mixer("ssa_dwc5") and is_attention_mixer("sdsa") and not is_attention_mixer("dwc3")
