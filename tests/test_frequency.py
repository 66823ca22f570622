"""utils.frequency: measured neuron gains vs |H(e^jw)|, pooling and the high-frequency ratio."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.frequency import (high_frequency_ratio, if_transfer, lif_transfer, measure_membrane_gain,
                             parse_model_spec, radial_log_amplitude, toy_signals, band_fraction)

OMEGAS = np.linspace(0.05, 0.95, 7) * np.pi
TOL = 2e-3  # relative; the membrane is the exact linear system, the fit removes start-up transients


@pytest.mark.parametrize("tau", [2.0, 4.0])
@pytest.mark.parametrize("layers", [1, 3])
def test_lif_membrane_gain_matches_transfer_function(tau, layers):
    measured = measure_membrane_gain(OMEGAS, "lif", tau, layers)
    np.testing.assert_allclose(measured, lif_transfer(OMEGAS, 1 - 1 / tau, layers), rtol=TOL)


@pytest.mark.parametrize("layers", [1, 2])
def test_if_membrane_gain_matches_integrator(layers):
    measured = measure_membrane_gain(OMEGAS, "if", layers=layers)
    np.testing.assert_allclose(measured, if_transfer(OMEGAS, layers), rtol=TOL)


def test_lif_is_low_pass_and_less_so_than_if():
    lif, iff = lif_transfer(OMEGAS, 0.5), if_transfer(OMEGAS)
    assert np.all(np.diff(lif) < 0) and np.all(np.diff(iff) < 0)
    assert lif[0] / lif[-1] < iff[0] / iff[-1]  # IF's pole at z=1 attenuates high frequencies more


def smooth_image(n=64):
    yy, xx = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    return (0.5 + 0.4 * torch.sin(2 * np.pi * 4 * xx / n) * torch.sin(2 * np.pi * 3 * yy / n))[None, None]


def circular(x):
    return F.pad(x, (1, 1, 1, 1), mode="circular")


def test_max_pool_creates_and_avg_pool_removes_high_frequencies():
    """On a band-limited image (no energy above the cut-off) the max nonlinearity creates high
    frequencies; a linear average can only attenuate them. With high-frequency texture added,
    avg-pool lowers the ratio and keeps less of it than max-pool."""
    img = smooth_image()
    assert high_frequency_ratio(img) < 1e-10
    assert high_frequency_ratio(F.max_pool2d(circular(img), 3, 1)) > 1e-4
    assert high_frequency_ratio(F.avg_pool2d(circular(img), 3, 1)) < 1e-10
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    textured = img + 0.05 * torch.sin(2 * np.pi * 22 * (xx + yy) / 64)
    hf = high_frequency_ratio(textured)
    hf_avg = high_frequency_ratio(F.avg_pool2d(circular(textured), 3, 1))
    hf_max = high_frequency_ratio(F.max_pool2d(circular(textured), 3, 1))
    assert hf_avg < hf / 100 and hf_max > 10 * hf_avg


def test_relative_log_amplitude_is_zero_at_dc_and_drops_after_blur():
    x = torch.rand(2, 4, 32, 32)
    r, v = radial_log_amplitude(x)
    assert r[0] == 0 and v[0] == 0 and len(r) == len(v)
    _, vb = radial_log_amplitude(F.avg_pool2d(circular(x), 3, 1))
    assert vb[-1] < v[-1] - 1.0  # blur removes high frequencies
    # [T,B,C,H,W] feature maps are averaged over T
    assert high_frequency_ratio(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)) == pytest.approx(high_frequency_ratio(x), rel=1e-5)


def test_toy_spikes_attenuate_high_input_components_after_linear_layer():
    s = toy_signals()
    fs = float(s["fs"])
    assert band_fraction(s["x"], fs, 350) < 1e-6  # input: only 100/200/300 Hz
    assert band_fraction(s["relu"], fs, 350) > 0.01  # ReLU creates harmonics (wider band)


def test_model_spec_parsing():
    assert parse_model_spec("maxformer_cifar") == ("maxformer_cifar", "maxformer_cifar", {})
    label, name, kw = parse_model_spec("avg=maxformer_cifar:mixers=('avg','avg','avg');neuron=if")
    assert (label, name) == ("avg", "maxformer_cifar")
    assert kw == {"mixers": ("avg", "avg", "avg"), "neuron": "if"}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_spec("maxformer_cifar:oops")


def test_feature_spectra_and_gradcam_on_a_small_model():
    import timm

    import models  # noqa: F401
    from utils.energy import calibrate_bn
    from utils.frequency import feature_spectra, grad_cam

    torch.manual_seed(0)
    net = timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=2)
    x = torch.randn(2, 3, 32, 32)
    calibrate_bn(net, [x])
    rows = feature_spectra(net, x)
    assert [r["block"] for r in rows][:2] == ["patch_embed1", "stage1.0"]
    assert all(0 <= r["hf_ratio"] <= 1 for r in rows)
    cam = grad_cam(net, x, rows[-1]["block"])
    assert cam.shape == (2, 32, 32) and float(cam.max()) == pytest.approx(1.0)
