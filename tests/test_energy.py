"""utils.analysis.energy: SOP / MAC / energy counting with analytic answers, firing rates by hand."""
import json
import os

import pytest
import torch
import torch.nn as nn

from models.neurons import NeuronConfig
from utils.analysis.energy import (EnergyConfig, FiringRateMonitor, calibrate_bn, main, measure_energy, settings_tag,
                          table9_group)

PJ = 1e-9  # pJ -> mJ


class TimeRepeat(nn.Module):
    """Runs ``body`` on ``x`` repeated T times and flattened to ``[T*B, ...]`` (like the models)."""

    def __init__(self, body: nn.Module, T: int):
        super().__init__()
        self.body, self.T = body, T

    def forward(self, x):
        return self.body(x.unsqueeze(0).repeat(self.T, *([1] * x.dim())).flatten(0, 1))


def exact_rate_spikes(shape, rate, seed=0):
    """Binary tensor with exactly ``rate * numel`` ones at random positions."""
    n = int(torch.tensor(shape).prod())
    k = int(round(rate * n))
    flat = torch.zeros(n)
    flat[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = 1.0
    return flat.view(shape), k / n


def test_conv_sops_equal_rate_times_T_times_flops():
    T, B = 4, 2
    conv = nn.Conv2d(8, 16, 3, padding=1)
    net = TimeRepeat(conv, T)
    x, rate = exact_rate_spikes((B, 8, 10, 10), 0.3)
    report = measure_energy(net, [x], T=T)
    flops = 16 * 8 * 9 * 10 * 10  # MACs per image per step
    (layer,) = report.layers
    assert layer.input == "spike"
    assert layer.input_rate == pytest.approx(rate, rel=1e-12)
    assert report.sops == pytest.approx(rate * T * flops, rel=1e-12)
    assert report.mac_flops == 0
    assert report.energy_mj == pytest.approx(0.9 * rate * T * flops * PJ, rel=1e-12)
    assert report.ann_energy_mj == pytest.approx(4.6 * flops * PJ, rel=1e-12)


def test_constants_are_configurable():
    net = TimeRepeat(nn.Linear(32, 8), 2)
    x, rate = exact_rate_spikes((5, 32), 0.25)
    cfg = EnergyConfig(e_mac_pj=3.0, e_ac_pj=0.5)
    report = measure_energy(net, [x], T=2, config=cfg)
    assert report.energy_mj == pytest.approx(0.5 * rate * 2 * 32 * 8 * PJ, rel=1e-12)
    with pytest.raises(ValueError, match="e_ac_pj"):
        EnergyConfig(e_ac_pj=-1)


class TinySNN(nn.Module):
    """image -> conv -> BN -> LIF -> conv -> LIF -> linear head; first conv reads real values."""

    def __init__(self, T=4, v_threshold=None):
        super().__init__()
        self.T = T
        cfg = NeuronConfig()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.lif1 = cfg.make(v_threshold)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.lif2 = cfg.make(v_threshold)
        self.head = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        T, B = self.T, x.shape[0]
        h = self.bn(self.stem(x.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1)))
        s = self.lif1(h.view(T, B, *h.shape[1:]))
        h = self.conv(s.flatten(0, 1))
        s = self.lif2(h.view(T, B, *h.shape[1:]))
        return self.head(s.flatten(2)).mean(0)


def test_silent_network_costs_only_first_layer_macs():
    net = TinySNN(T=4, v_threshold=1e9)  # no neuron ever fires
    report = measure_energy(net, [torch.randn(3, 3, 6, 6)])
    first_layer_flops = 8 * 3 * 9 * 6 * 6
    assert report.sops == 0
    assert report.mac_flops == pytest.approx(4 * first_layer_flops)  # T steps of the stem
    assert report.energy_mj == pytest.approx(4.6 * 4 * first_layer_flops * PJ, rel=1e-12)
    assert set(report.firing_rates.values()) == {0.0}


def test_dense_ann_costs_4p6_pj_per_flop():
    ann = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 7))
    report = measure_energy(ann, [torch.randn(2, 3, 6, 6)], T=1, crosscheck=True)
    flops = 6 * 3 * 9 * 4 * 4 + 6 * 4 * 4 * 7
    assert report.sops == 0
    assert report.mac_flops == pytest.approx(flops)
    assert report.energy_mj == pytest.approx(4.6 * flops * PJ, rel=1e-12)
    assert report.ann_energy_mj == pytest.approx(report.energy_mj, rel=1e-12)
    assert report.sj_crosscheck["mac"] == pytest.approx(flops)  # spikingjelly MACCounter agrees


def test_attention_matmul_is_counted_with_left_operand_rate():
    class SpikeAttention(nn.Module):
        T = 1

        def forward(self, qk):
            q, k = qk[:, 0], qk[:, 1]
            return q @ k.transpose(-2, -1)

    q, rq = exact_rate_spikes((2, 16, 8), 0.25, seed=1)
    k, _ = exact_rate_spikes((2, 16, 8), 0.5, seed=2)
    report = measure_energy(SpikeAttention(), [torch.stack([q, k], 1)], T=1)
    (layer,) = report.layers
    assert layer.kind == "matmul"
    assert report.sops == pytest.approx(rq * 16 * 16 * 8, rel=1e-12)


def test_crosscheck_matches_spikingjelly_for_pointwise_layers():
    """1x1 conv and linear: the paper's r x FLOPs equals spikingjelly's exact SynOp count."""
    body = nn.Sequential(nn.Conv2d(4, 6, 1), nn.Flatten(), nn.Linear(6 * 8 * 8, 3))
    net = TimeRepeat(body, 2)
    x, _ = exact_rate_spikes((2, 4, 8, 8), 0.2, seed=3)
    report = measure_energy(net, [x], T=2, crosscheck=True)
    assert report.sj_crosscheck["synop"] == pytest.approx(
        sum(layer.sops for layer in report.layers if layer.input == "spike") / 2, rel=1e-9)
    assert report.sj_crosscheck["mac"] == pytest.approx(report.mac_flops)  # the Linear reads real conv output


def test_integer_inputs_as_ac_option():
    net = TimeRepeat(nn.Linear(10, 4), 1)
    x = torch.randint(0, 3, (3, 10)).float()  # pre-spike sums in {0, 1, 2}
    assert measure_energy(net, [x], T=1).sops == 0
    r = measure_energy(net, [x], T=1, config=EnergyConfig(integer_inputs_as_ac=True))
    assert r.sops == pytest.approx(x.mean().item() * 10 * 4, rel=1e-6)
    assert r.mac_flops == 0


def test_firing_rates_match_hand_count():
    """IF neurons (V_th=1, hard reset) under constant currents over T=4 steps: spikes counted by hand."""
    lif = NeuronConfig(kind="if").make()
    currents = torch.tensor([0.0, 0.3, 0.5, 1.0])  # spikes in 4 steps: 0, 1, 2, 4
    x = currents.view(1, 1, 4).repeat(4, 1, 1)  # [T, B, N]
    with FiringRateMonitor(nn.Sequential(lif)) as mon:
        out = lif(x)
    assert out.sum(0).flatten().tolist() == [0, 1, 2, 4]
    assert mon.rates() == {"0": pytest.approx(7 / 16)}


def test_per_group_sums_equal_total_on_maxformer():
    from models import create_model

    torch.manual_seed(0)
    net = create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=2)
    batches = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    calibrate_bn(net, batches)
    report = measure_energy(net, batches, crosscheck=True)
    groups = report.per_group()
    assert sum(groups.values()) == pytest.approx(report.energy_mj, rel=1e-12)
    assert "other" not in groups
    assert {"S1 embed", "S2 embed", "S3 embed", "S2 mixer", "S3 mixer", "S3 mlp", "classifier"} <= set(groups)
    # the first conv reads the image (MACs), SSA's products are counted inside the attention module
    assert report.layers[0].name == "patch_embed1.proj_conv" and report.layers[0].input == "real"
    assert any(layer.name.endswith("attn") and layer.kind == "matmul" for layer in report.layers)
    assert report.sops > 0 and report.sj_crosscheck["mac"] == pytest.approx(report.mac_flops)
    assert 0.8 < report.sj_crosscheck["synop_ratio"] <= 1.0  # padding borders / spike coincidences


def test_table9_names():
    assert table9_group("patch_embed2.max_embed1.embed_conv") == "S2 embed"
    assert table9_group("stage3.1.attn.proj_conv") == "S3 mixer"
    assert table9_group("stage1.0.mlp.fc1_conv") == "S1 mlp"
    assert table9_group("head") == "classifier"
    assert table9_group("layer2.0.conv1") == "S2 conv"


def test_no_batches_is_a_clear_error():
    with pytest.raises(ValueError, match="no batches"):
        measure_energy(TinySNN(), [])


def test_cli_writes_json(tmp_path, capsys):
    rc = main(["--model", "maxformer_cifar", "--batch-size", "1", "--calibrate-bn", "1", "--quiet",
               "--out", str(tmp_path)])
    assert rc == 0
    d = json.loads((tmp_path / "maxformer_cifar_T4_energy.json").read_text())
    assert d["energy_mj_per_image"] == pytest.approx(sum(d["per_group_mj"].values()))
    assert (tmp_path / "maxformer_cifar_T4_firing_rates.png").exists()
    assert "E_SNN" in capsys.readouterr().out


def test_cli_unknown_model_names_close_match(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "maxformer_cifr"])
    assert exit_info.value.code == 2
    assert "Did you mean: maxformer_cifar" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--T", "0"], "argument -T/--T: expected a positive integer, got 0"),
    (["--T", "two"], "argument -T/--T: expected a positive integer, got 'two'"),
    (["--batch-size", "-1"], "argument -b/--batch-size: expected a positive integer"),
    (["--batches", "0"], "argument --batches: expected a positive integer"),
    (["--img-size", "0"], "argument --img-size: expected a positive integer"),
    (["--calibrate-bn", "-2"], "argument --calibrate-bn: expected an integer >= 0"),
    (["--e-mac", "nan"], "argument --e-mac: expected a finite number >= 0"),
    (["--e-ac", "-0.9"], "argument --e-ac: expected a finite number >= 0"),
    (["--model-kwargs", "embed_dims"], "key=value"),
    (["--model-kwargs", "embed_dimz=8"], "has no setting 'embed_dimz'. Did you mean: embed_dims"),
    (["--checkpoint", "no/such/file.pth.tar"], "checkpoint not found"),
])
def test_cli_bad_input_is_a_clear_error(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "maxformer_cifar", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_cli_event_model_input_comes_from_its_registered_config(tmp_path):
    """maxformer_dvs takes [B, T, 2, H, W] event frames: the shape is read from the model, not its name."""
    main(["--model", "maxformer_dvs", "--model-kwargs", "embed_dims=32", "num_heads=2", "--T", "2",
          "--img-size", "32", "--batch-size", "1", "--calibrate-bn", "1", "--quiet", "--out", str(tmp_path)])
    d = json.loads((tmp_path / "maxformer_dvs_T2_embed_dims32-num_heads2_32px_energy.json").read_text())
    assert d["input"].startswith("synthetic images [1, 2, 2, 32, 32] x1, random init, BN calibrated")
    assert d["T"] == 2 and d["layers"][0]["input"] == "real"


def test_cli_img_size_applies_to_config_data_and_names_the_files(tmp_path):
    """--img-size resizes a config's evaluation data too; model kwargs and the size are in the file names,
    so runs with other settings do not overwrite each other."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = ["--model", "maxformer_cifar", "--model-kwargs", "embed_dims=32",
            "-c", os.path.join(root, "demo/digits.yaml"), "--batch-size", "1",
            "--calibrate-bn", "0", "--quiet", "--out", str(tmp_path)]
    flops = {}
    for size in (16, 32):
        assert main(base + ["--img-size", str(size)]) == 0
        d = json.loads((tmp_path / f"maxformer_cifar_T4_embed_dims32_{size}px_energy.json").read_text())
        flops[size] = d["flops_per_image_per_step"]
    assert flops[32] > 3 * flops[16]


def test_cli_synthetic_input_kind_with_config_data_is_refused(tmp_path, capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "maxformer_cifar", "-c", os.path.join(root, "demo/digits.yaml"), "--input", "randn",
              "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--input randn chooses the synthetic input" in capsys.readouterr().err


def test_settings_tag_is_short_and_stable():
    assert settings_tag({"num_heads": 2, "embed_dims": 32}) == "embed_dims32-num_heads2"
    long = {"mixers": ["orig", "max", "max"] * 5, "embed_dims": 32}
    assert settings_tag(long) == settings_tag(dict(reversed(long.items()))) and len(settings_tag(long)) == 12


def test_cli_checkpoint_of_train_py_brings_its_model_kwargs(tmp_path):
    """--checkpoint RUN/last.pth.tar needs no --model-kwargs repeated: the file records them."""
    from models import create_model

    trained = create_model("maxformer_cifar", embed_dims=32, num_heads=1, T=2, num_classes=7)
    ck = tmp_path / "last.pth.tar"
    torch.save({"state_dict": trained.state_dict(), "config": {"model": "maxformer_cifar", "T": 2,
                "model_kwargs": {"embed_dims": 32, "num_heads": 1}, "num_classes": None}}, ck)
    assert main(["--model", "maxformer_cifar", "--checkpoint", str(ck), "--img-size", "16", "--batch-size", "1",
                 "--quiet", "--out", str(tmp_path / "e")]) == 0
    d = json.loads((tmp_path / "e" / "maxformer_cifar_T2_16px_energy.json").read_text())
    assert d["T"] == 2 and "checkpoint" in d["input"]
