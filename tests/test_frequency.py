"""utils.analysis.frequency: measured neuron gains vs |H(e^jw)|, pooling and the high-frequency ratio."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import ModelError
from utils.analysis.frequency import (band_fraction, high_frequency_ratio, if_transfer, lif_transfer, main,
                             measure_membrane_gain, parse_model_spec, radial_log_amplitude, toy_signals)

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
    stacked = x.unsqueeze(0).repeat(3, 1, 1, 1, 1)
    assert high_frequency_ratio(stacked) == pytest.approx(high_frequency_ratio(x), rel=1e-5)


def test_toy_spikes_attenuate_high_input_components_after_linear_layer():
    s = toy_signals()
    fs = float(s["fs"])
    assert band_fraction(s["x"], fs, 350) < 1e-6  # input: only 100/200/300 Hz
    assert band_fraction(s["relu"], fs, 350) > 0.01  # ReLU creates harmonics (wider band)


def test_model_spec_parsing():
    """Items are --model-kwargs items (models.parse_model_kwargs) separated by ';'."""
    assert parse_model_spec("maxformer_cifar") == ("maxformer_cifar", "maxformer_cifar", {})
    label, name, kw = parse_model_spec("avg=maxformer_cifar:mixers=[avg,avg,avg];neuron=if;embed_dims=64")
    assert (label, name) == ("avg", "maxformer_cifar")
    assert kw == {"mixers": ["avg", "avg", "avg"], "neuron": "if", "embed_dims": 64}
    assert parse_model_spec("max-pool=maxformer_cifar:embeds=orig,orig,orig")[2] == {"embeds": ["orig"] * 3}
    with pytest.raises(ModelError, match="key=value"):
        parse_model_spec("maxformer_cifar:oops")


@pytest.mark.parametrize("args, message", [
    (["transfer", "--tau", "1"], "argument --tau: expected a time constant > 1"),
    (["transfer", "--layers", "0"], "argument --layers: expected a positive integer, got 0"),
    (["transfer", "--w-min", "1.5"], "argument --w-min: expected a number in (0, 0.98)"),
    (["toy", "--beta", "1"], "argument --beta: expected a decay in [0, 1)"),
    (["toy", "--fs", "inf"], "argument --fs: expected a finite number > 0"),
    (["spectra", "--model", "maxformer_cifr"], "Did you mean: maxformer_cifar"),
    (["spectra", "--model", "maxformer_cifar:embed_dims"], "key=value"),
    (["spectra", "--model", "maxformer_dvs"], "not RGB images"),
    (["spectra", "--model", "maxformer_cifar", "--img-size", "0"], "argument --img-size: expected a positive"),
    (["gradcam", "--model", "maxformer_cifar", "--images", "no/such.jpg"], "image 'no/such.jpg' does not exist"),
])
def test_cli_bad_input_is_a_clear_error(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_feature_spectra_and_gradcam_on_a_small_model():
    from models import create_model
    from utils.analysis.energy import calibrate_bn
    from utils.analysis.frequency import feature_spectra, grad_cam

    torch.manual_seed(0)
    net = create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=2)
    x = torch.randn(2, 3, 32, 32)
    calibrate_bn(net, [x])
    rows = feature_spectra(net, x)
    assert [r["block"] for r in rows][:2] == ["patch_embed1", "stage1.0"]
    assert all(0 <= r["hf_ratio"] <= 1 for r in rows)
    cam = grad_cam(net, x, rows[-1]["block"])
    assert cam.shape == (2, 32, 32) and float(cam.max()) == pytest.approx(1.0)


def test_spectra_cli_compares_models_built_from_specs(tmp_path):
    small = "embed_dims=32;num_heads=2;T=2"
    main(["spectra", "--model", f"lif=maxformer_cifar:{small}", "--model", f"if=maxformer_cifar:{small};neuron=if",
          "--img-size", "32", "--name", "s", "--out", str(tmp_path)])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert {r["model"] for r in rows} == {"lif", "if"} and (tmp_path / "s.png").exists()
    assert all(0 <= float(r["hf_ratio"]) <= 1 for r in rows)


def test_blocks_that_are_not_a_regex_are_named(capsys):
    from utils.analysis.frequency import main as frequency_main

    with pytest.raises(SystemExit) as info:
        frequency_main(["spectra", "--model", "maxformer_cifar", "--blocks", "(["])
    err = capsys.readouterr().err
    expected = "argument --blocks: not a regular expression (unterminated character set at position 1: '(' then '['"
    assert info.value.code == 2 and expected in err and "Traceback" not in err


def test_weights_for_a_label_no_model_has_are_refused(capsys):
    from utils.analysis.frequency import main as frequency_main

    with pytest.raises(SystemExit) as info:
        frequency_main(["spectra", "--model", "a=maxformer_cifar", "--weights", "b=missing.pth.tar"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--weights b=...: no --model has the label 'b'; labels: a" in err
