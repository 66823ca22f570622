"""models.neurons: the factory's maths (against hand-computed sequences), options, errors and reporting."""
import pytest
import torch

from models.neurons import NeuronConfig, convert_neurons, describe_neurons, neuron_implementation, reset_net

X = torch.tensor([[1.5], [0.2], [1.9], [0.4], [3.0]])  # [T=5, 1]


def run(cfg, x=X):
    node = cfg.make()
    out = node(x.clone())
    reset_net(node)
    return out.flatten().tolist()


def test_published_lif_hard_reset_by_hand():
    # H = V + (X - V)/2; spike if H >= 1; V = 0 after a spike
    # t0: H=.75 -> 0 ; t1: H=.475 -> 0 ; t2: H=1.1875 -> 1, V=0 ; t3: H=.2 -> 0 ; t4: H=1.6 -> 1
    assert run(NeuronConfig()) == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_soft_reset_and_if_by_hand():
    # x = 3.0, 1.6 -- hard: 1.5 -> spike, V=0 ; .8 -> 0.  soft (V -= V_th): 1.5 -> spike, V=.5 ; 1.05 -> spike
    x = torch.tensor([[3.0], [1.6]])
    assert run(NeuronConfig(), x) == [1.0, 0.0]
    assert run(NeuronConfig(v_reset="soft"), x) == [1.0, 1.0]
    assert NeuronConfig(v_reset="soft").v_reset is None  # 'soft' survives timm dropping None kwargs
    # IF (no leak, V += X), hard reset: 1.5 -> spike, 0 ; .2 ; 2.1 -> spike ; .4 ; 3.4 -> spike
    assert run(NeuronConfig(kind="if")) == [1.0, 0.0, 1.0, 0.0, 1.0]
    # a higher threshold (override used by the attention LIFs goes the other way)
    assert run(NeuronConfig(v_threshold=2.0)) == [0.0, 0.0, 0.0, 0.0, 0.0]
    node = NeuronConfig().make(v_threshold=0.5)
    assert node.v_threshold == 0.5


def test_torch_impl_matches_spikingjelly_and_state_resets():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 7) * 2
    for kind in ("lif", "if"):
        a, b = NeuronConfig(kind=kind).make(), NeuronConfig(kind=kind, impl="torch").make()
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        reset_net(a)
        reset_net(b)
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)  # same again after a reset


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="lfi"), "unknown neuron 'lfi'"),
    (dict(surrogate="relu"), "unknown surrogate 'relu'"),
    (dict(tau=1.0), "tau > 1"),
    (dict(impl="cupy"), "unknown neuron impl 'cupy'"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuronConfig(**kwargs)


def test_reporting_names_what_runs():
    assert neuron_implementation("lif", "cpu") == "spikingjelly lif cpu-op (torch.ops.sj_lif)"
    net = torch.nn.Sequential(NeuronConfig().make(), NeuronConfig(kind="if").make(), NeuronConfig().make())
    assert describe_neurons(net) == ("1 if: spikingjelly if cpu-op (torch.ops.sj_if);"
                                     " 2 lif: spikingjelly lif cpu-op (torch.ops.sj_lif)")
    assert convert_neurons(net, "torch") == 3
    assert describe_neurons(net) == "1 if: pure-PyTorch loop (impl='torch'); 2 lif: pure-PyTorch loop (impl='torch')"
    assert describe_neurons(torch.nn.Linear(2, 2)) == "no spiking neurons"
