"""Any spikingjelly multi-step neuron by short name or class name: built, checked, reset, counted, saved, trained."""
import logging
import math
import os

import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

import train
from models import ModelError, create_model, describe_neurons
from models.neurons import NEURONS, NeuronConfig, convert_neurons, neuron_kwarg_types, reset_net, spiking_modules
from utils.training.logger import read_summary

SMALL = dict(embed_dims=16, num_heads=1)
DIGITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "digits.yaml")


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("maxformer_cifar", **SMALL, **kwargs)


def test_short_name_and_class_name_build_the_same_neuron():
    a, b = NeuronConfig(kind="plif").make(), NeuronConfig(kind="ParametricLIFNode").make()
    for node in (a, b):
        assert type(node) is sj_neuron.ParametricLIFNode and node.step_mode == "m"
        # the model-wide settings reach it: V_th 1, hard reset 0, detach_reset, Sigmoid(alpha=4)
        assert node.v_threshold == 1.0 and node.v_reset == 0.0 and node.detach_reset
        assert isinstance(node.surrogate_function, sj_surrogate.Sigmoid) and node.surrogate_function.alpha == 4.0
    x = torch.rand(4, 2, 8) * 3
    assert torch.equal(a(x), b(x))
    # PLIF's initial time constant is the shared tau (init_tau, its own name, also works)
    assert torch.sigmoid(NeuronConfig(kind="plif", tau=3.0).make().w).item() == pytest.approx(1 / 3)
    assert torch.sigmoid(NeuronConfig.from_kwargs("plif", init_tau=4.0).make().w).item() == pytest.approx(1 / 4)


def test_a_new_kind_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(NEURONS, "cuba", NEURONS["lif"].__class__(sj_neuron.CUBALIFNode, {"v_decay": 0.5}))
    model = _model(neuron="cuba", c_decay=0.25)
    nodes = [m for _, m in spiking_modules(model)]
    assert len(nodes) == 25 and all(type(m) is sj_neuron.CUBALIFNode for m in nodes)
    assert {(m.c_decay, m.v_decay, m.step_mode) for m in nodes} == {(0.25, 0.5, "m")}
    assert describe_neurons(model) == "25 cuba: spikingjelly CUBALIFNode's own multi-step forward"


def test_own_arguments_are_model_kwargs_checked_against_the_signature():
    model = _model(neuron="CUBALIFNode", c_decay=0.3)
    nodes = [m for _, m in spiking_modules(model)]
    # the model's thresholds reach it (1, and 0.5 in attention), not the class default 0.5 everywhere
    assert {(type(m).__name__, m.c_decay, m.v_threshold, m.step_mode) for m in nodes} == {
        ("CUBALIFNode", 0.3, 1.0, "m"), ("CUBALIFNode", 0.3, 0.5, "m")}
    assert {"c_decay", "v_decay", "tau", "v_threshold", "impl"} <= set(neuron_kwarg_types("CUBALIFNode"))
    with pytest.raises(ModelError, match=r"has no setting 'c_decy'\. Did you mean: c_decay"):
        _model(neuron="CUBALIFNode", c_decy=0.3)
    with pytest.raises(ModelError, match=r"'c_decay' of model 'maxformer_cifar' takes a number, got the string"):
        _model(neuron="CUBALIFNode", c_decay="fast")
    with pytest.raises(ModelError, match=r"unknown neuron 'ParametricLifNode'.*Did you mean: ParametricLIFNode"):
        _model(neuron="ParametricLifNode")
    with pytest.raises(ModelError, match=r"neuron impl 'torch' exists for lif, if, not for 'plif'"):
        _model(neuron="plif", neuron_impl="torch")
    with pytest.raises(ModelError, match=r"MaskedPSN.*needs k \(model kwargs\)"):
        _model(neuron="MaskedPSN")
    from models.maxformer import SpikingTransformer

    # the model class itself (without create_model) refuses too
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['c_decay'\].*kwargs of neuron 'plif'"):
        SpikingTransformer(neuron="plif", c_decay=0.3, **SMALL)


def test_neurons_whose_constructor_takes_T_get_the_models():
    model = _model(neuron="DSRIFNode", T=3)
    assert {m.T for _, m in spiking_modules(model)} == {3}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_reset_describe_and_fast_path_conversion():
    model = _model(neuron="plif", stateful=True)
    model(torch.randn(2, 3, 32, 32))
    nodes = [m for _, m in spiking_modules(model)]
    assert any(isinstance(m.v, torch.Tensor) and m.v.abs().sum() > 0 for m in nodes)
    reset_net(model)
    assert all(m.v == 0.0 for m in nodes)
    assert describe_neurons(model) == "25 plif: spikingjelly plif cpu-op (torch.ops.sj_plif)"
    assert convert_neurons(model, "torch") == 0  # no PyTorch loop for PLIF: left as it is
    assert all(type(m) is sj_neuron.ParametricLIFNode for m in nodes)


def test_fast_path_says_in_one_line_where_no_fused_path_exists(caplog):
    from utils.training.fastpath import FastPathConfig, _warn_once, prepare_model

    _warn_once.cache_clear()
    model = _model(neuron="plif")
    with caplog.at_level(logging.WARNING, logger="utils.training.fastpath"):
        prepare_model(model, "train", config=FastPathConfig(neuron_impl="torch", compile=False))
    lines = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert lines == ["fast path: no neuron_impl 'torch' for 25 plif neurons (it exists for LIF/IF); they run "
                     "spikingjelly's own multi-step forward, uncompiled unless the whole model is"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_learned_neuron_parameters_are_in_the_state_dict():
    model = _model(neuron="plif")
    with torch.no_grad():
        model.head_lif.w.fill_(0.7)
    state = model.state_dict()
    assert state["head_lif.w"].item() == pytest.approx(0.7)
    fresh = _model(neuron="plif")
    fresh.load_state_dict(state)
    assert fresh.head_lif.w.item() == pytest.approx(0.7)
    assert "head_lif.w" in dict(fresh.named_parameters())  # trained with the rest


@pytest.mark.parametrize("neuron", ["plif", "CUBALIFNode"])
def test_energy_and_firing_rates_count_any_neuron(neuron):
    from utils.analysis.energy import FiringRateMonitor, calibrate_bn, measure_energy

    model = _model(neuron=neuron, T=2)
    batches = [torch.randn(2, 3, 16, 16)]
    calibrate_bn(model, batches)
    with FiringRateMonitor(model) as mon:
        model.eval()(batches[0])
    rates = mon.rates()
    assert len(rates) == 25 and all(0.0 <= r <= 1.0 for r in rates.values()) and max(rates.values()) > 0
    assert set(mon.kinds.values()) == {"ParametricLIFNode" if neuron == "plif" else neuron}
    report = measure_energy(model, batches)
    assert len(report.firing_rates) == 25 and report.sops > 0


def test_frequency_transfer_says_it_supports_lif_and_if():
    from utils.analysis.frequency import measure_membrane_gain

    with pytest.raises(ValueError, match=r"^this analysis supports LIF/IF \(neuron 'lif' or 'if'\), got 'plif'$"):
        measure_membrane_gain([math.pi / 4], kind="plif")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("neuron,given", [("plif", ["--neuron", "plif"]),  # the config key
                                          ("CUBALIFNode", ["--model-kwargs", "neuron=CUBALIFNode"])])
def test_demo_learns_with_another_neuron(tmp_path, neuron, given):
    rc = train.main(["-c", DIGITS, *given, "--epochs", "2",
                     "--warmup-epochs", "0", "--max-eval-batches", "1", "--output", str(tmp_path), "--experiment",
                     neuron, "--progress", "false", "--plot", "false", "--tensorboard", "false", "--fastpath", "false"])
    assert rc == 0
    top1 = [float(r["eval_top1"]) for r in read_summary(str(tmp_path / neuron / "summary.csv"))]
    assert top1[-1] >= 30.0, top1  # chance is 10 %
