"""Config parsing (YAML -> defaults -> CLI), error messages, and the published lr schedules."""
import math
import os
import subprocess
import sys

import pytest
import torch

from utils.config import ConfigError
from utils.training.engine import build_optimizer, build_scheduler, resolve_lr
from utils.training.preflight import parse_run_config
from utils.training.run_setup import describe_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yaml(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_then_cli_override_and_number_coercion(tmp_path):
    path = _yaml(tmp_path, "lr: 1.5e-3\nweight_decay: 6e-2\nmin_lr: 1e-5\nbatch_size: 16\n"
                           "model_kwargs: {embed_dims: 64}\n")
    cfg = parse_run_config(["-c", path, "--batch-size", "8", "--weight_decay", "0.1", "--model-kwargs", "tau=2.5"])
    assert cfg.lr == 1.5e-3 and cfg.min_lr == 1e-5 and isinstance(cfg.min_lr, float)
    assert cfg.weight_decay == 0.1 and cfg.batch_size == 8
    assert cfg.model_kwargs == {"embed_dims": 64, "tau": 2.5}
    assert cfg.experiment == "c"  # defaults to the config file name
    cfg = parse_run_config(["-c", path])
    assert cfg.weight_decay == pytest.approx(0.06) and isinstance(cfg.weight_decay, float)
    assert parse_run_config(["-c", path, "--model-kwargs", "none", "depths=2"]).model_kwargs == {"depths": 2}


def test_bool_list_and_choice_flags(tmp_path):
    cfg = parse_run_config(["--channels-last", "--compile", "false", "--opt-betas", "0.9", "0.99", "--amp", "bf16"])
    assert cfg.channels_last is True and cfg.compile is False
    assert cfg.opt_betas == [0.9, 0.99] and cfg.amp == "bf16"
    with pytest.raises(ConfigError, match="'amp'.*'fp32'"):
        parse_run_config(["--amp", "fp32"])


@pytest.mark.parametrize("argv,pattern", [
    (["--wieght-decay", "0.1"], r"unknown config key 'wieght_decay'.*weight_decay"),
    (["--lr", "fast"], r"config key 'lr': expected a number, got 'fast'"),
    (["--epochs", "2.5"], r"config key 'epochs': expected an integer, got '2.5'"),
    (["--batch-size", "0"], r"'batch_size' must be >= 1, got 0; set --batch-size"),
])
def test_cli_errors_name_the_problem(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_run_config(argv)


def test_yaml_errors_name_key_value_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'warmup:epochs'.*Did you mean: warmup_epochs"):
        parse_run_config(["-c", _yaml(tmp_path, "warmup:epochs: 5\n")])  # the published ImageNet typo
    with pytest.raises(ConfigError, match=r"'seed': expected an integer, got 'abc'"):
        parse_run_config(["-c", _yaml(tmp_path, "seed: abc\n")])
    with pytest.raises(ConfigError, match=r"'model_kwargs': expected a mapping"):
        parse_run_config(["-c", _yaml(tmp_path, "model_kwargs: 3\n")])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_run_config(["-c", str(tmp_path / "missing.yaml")])


def test_base_inheritance_merges_mappings(tmp_path):
    _yaml(tmp_path, "lr: 0.1\nepochs: 7\nmodel_kwargs: {embed_dims: 64, num_heads: 2}\n", "parent.yaml")
    child = _yaml(tmp_path, "base: parent.yaml\nepochs: 3\nmodel_kwargs: {mixers: [ssa, ssa, ssa]}\n")
    cfg = parse_run_config(["-c", child])
    assert cfg.lr == 0.1 and cfg.epochs == 3
    assert cfg.model_kwargs == {"embed_dims": 64, "num_heads": 2, "mixers": ["ssa", "ssa", "ssa"]}


def test_train_cli_exits_2_with_message_and_no_traceback(tmp_path):
    bad = _yaml(tmp_path, "lr: 0.1\nbatch_sise: 8\n")
    r = subprocess.run([sys.executable, "train.py", "-c", bad], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "unknown config key 'batch_sise'" in r.stderr and "batch_size" in r.stderr
    assert "Traceback" not in r.stderr
    checkpoint = tmp_path / "last.pth.tar"  # -c given a checkpoint (binary, a zip)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    r = subprocess.run([sys.executable, "train.py", "-c", str(checkpoint)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not a YAML config (binary content)" in r.stderr and "--resume / --initial-checkpoint" in r.stderr


def test_every_key_is_typed_with_real_help():
    from utils.config import all_options

    for key, opt in all_options().items():
        assert opt.kind is not None or key in ("model_kwargs",), key
        assert len(opt.help) > 8 and "utils/data.py" not in opt.help, key


@pytest.mark.parametrize("argv,pattern", [
    (["--img-size", "abc"], r"config key 'img_size': expected an integer, got 'abc'"),
    (["--img-size", "0"], r"'img_size' must be >= 1, got 0"),
    (["--num-classes", "0"], r"'num_classes' must be >= 1, got 0; .* or null"),
    (["--workers", "-1"], r"'workers' must be >= 0, got -1"),
    (["--max-train-batches", "-1"], r"'max_train_batches' must be >= 0, got -1"),
    (["--max-eval-batches", "-2"], r"'max_eval_batches' must be >= 0, got -2"),
    (["--reprob", "1.5"], r"'reprob' must be between 0 and 1, got 1.5"),
    (["--remode", "zero"], r"'remode': 'zero' is not one of const, pixel, rand"),
    (["--scale", "0.5"], r"'scale' needs 2 values, got 1"),
    (["--mean", "0.5", "0.5"], r"'mean': digits has 3 input channels, got 2 values"),
    (["--dataset", "cifar10dvs", "--std", "0.5", "0"], r"'std': every value must be > 0"),
    (["--dataset", "cifar-10"], r"'dataset': unknown dataset 'cifar-10'. Did you mean 'cifar10'"),
    (["--interpolation", "cubic"], r"'interpolation': 'cubic' is not one of"),
    (["--synthetic-size", "10", "x"], r"'synthetic_size'\[1\]: expected an integer, got 'x'"),
])
def test_data_and_run_keys_are_validated(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_run_config(argv)


def test_data_keys_coerce_to_their_types(tmp_path):
    cfg = parse_run_config(["--img-size", "64", "--mean", "0.5", "0.4", "0.3", "--hflip", "0", "--aa", "rand-m9-n1",
                        "--download", "--synthetic-size", "8", "4", "--verify-data"])
    assert cfg.img_size == 64 and cfg.mean == [0.5, 0.4, 0.3] and cfg.hflip == 0.0 and isinstance(cfg.hflip, float)
    assert cfg.aa == "rand-m9-n1" and cfg.download is True and cfg.synthetic_size == [8, 4] and cfg.verify_data
    cfg = parse_run_config(["-c", _yaml(tmp_path, "img_size: '48'\ncrop_pct: 0.9\naa: null\n")])
    assert cfg.img_size == 48 and cfg.crop_pct == 0.9 and cfg.aa is None


def test_empty_or_comment_only_yaml_is_refused(tmp_path):
    for text in ("", "# only a comment\n", "\n\n"):
        with pytest.raises(ConfigError, match=r"c.yaml is empty: a config needs at least one key.*leave out -c"):
            parse_run_config(["-c", _yaml(tmp_path, text)])
    raw = tmp_path / "raw.yaml"
    raw.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="raw.yaml is not a YAML config"):
        parse_run_config(["-c", str(raw)])


def test_relative_data_path_in_yaml_is_relative_to_the_yaml(tmp_path, monkeypatch):
    (tmp_path / "configs" / "ablations").mkdir(parents=True)
    _yaml(tmp_path / "configs", "dataset: cifar10\ndata_path: ../data/cifar\n", "parent.yaml")
    child = _yaml(tmp_path / "configs" / "ablations", "base: ../parent.yaml\nlr: 0.1\n", "child.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert parse_run_config(["-c", child]).data_path == str(tmp_path / "data" / "cifar")  # the base file's folder
    own = _yaml(tmp_path / "configs" / "ablations", "base: ../parent.yaml\ndata_path: local\n", "own.yaml")
    assert parse_run_config(["-c", own]).data_path == str(tmp_path / "configs" / "ablations" / "local")
    absolute = _yaml(tmp_path, f"data_path: {tmp_path / 'abs'}\n", "abs.yaml")
    assert parse_run_config(["-c", absolute]).data_path == str(tmp_path / "abs")
    assert parse_run_config(["-c", _yaml(tmp_path, "data_path: null\n", "n.yaml")]).data_path is None
    # on the command line a relative path is relative to the current folder (stored absolute, e.g. in args.yaml)
    assert parse_run_config(["-c", child, "--data-path", "mine"]).data_path == str(elsewhere / "mine")


def test_warmup_longer_than_epochs_says_what_to_do():
    with pytest.raises(ConfigError) as e:
        parse_run_config(["-c", os.path.join(ROOT, "cifar10-100", "cifar10.yaml"), "--epochs", "1"])
    msg = str(e.value)
    assert "warmup_epochs (20) is larger than epochs (1)" in msg
    assert "Lower --warmup-epochs (e.g. --warmup-epochs 0) or raise --epochs to at least 20" in msg
    assert "the 10 cooldown_epochs come on top of epochs" in msg
    cfg = parse_run_config(["-c", os.path.join(ROOT, "cifar10-100", "cifar10.yaml"), "--epochs", "1",
                        "--warmup-epochs", "0"])
    assert describe_schedule(cfg, cfg.epochs + cfg.cooldown_epochs) == (
        "cosine over 1 epochs + 10 cooldown epochs at min_lr 1e-05 = 11 epochs in all (0..10), stepped per epoch")


def _sched_lrs(cfg, updates_per_epoch=1, per_update=False):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, total = build_scheduler(opt, cfg, updates_per_epoch)
    out = []
    for e in range(total):
        if per_update:
            sched.step_update(e * updates_per_epoch)
        else:
            sched.step(e)
        out.append(opt.param_groups[0]["lr"])
    return out, total, sched, opt


def test_cifar10_schedule_matches_published_timm_0_6_cosine():
    cfg = parse_run_config(["-c", os.path.join(ROOT, "cifar10-100", "cifar10.yaml")])
    lrs, total, _, _ = _sched_lrs(cfg)
    assert total == 410
    lr, wlr, mn = 1.5e-3, 8e-5, 1e-5
    for t in (0, 1, 10, 19):
        assert lrs[t] == pytest.approx(wlr + t * (lr - wlr) / 20)
    for t in (20, 100, 250, 399):  # cosine over the absolute epoch (a small jump at 20)
        assert lrs[t] == pytest.approx(mn + 0.5 * (lr - mn) * (1 + math.cos(math.pi * t / 400)))
    assert lrs[400] == lrs[409] == pytest.approx(mn)


def test_imagenet_schedule_matches_published_per_iteration_rule():
    cfg = parse_run_config(["-c", os.path.join(ROOT, "imagenet", "10_768_t4.yaml")])
    lr = resolve_lr(cfg, effective_batch=512)
    assert lr == pytest.approx(2.7e-3)  # blr 1.35e-3 x 512 / 256
    cfg.lr, cfg.blr = lr, None
    upe = 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched, total = build_scheduler(opt, cfg, upe)
    assert total == 200
    for step in (0, 7, 33, 49, 50, 51, 700, 1999):
        e = step / upe
        want = lr * e / 5 if e < 5 else 1e-5 + (lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * (e - 5) / 195))
        sched.step_update(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-12), step


def test_adamw_has_no_weight_decay_on_1d_params_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    cfg = parse_run_config(["--weight-decay", "0.06", "--opt", "adamw"])
    opt = build_optimizer(model, cfg, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert by_id[id(p)] == (0.0 if p.ndim <= 1 else 0.06), name


def test_none_on_the_command_line_switches_off_an_optional_key():
    assert parse_run_config(["--aa", "none", "--clip-grad", "null"]).aa is None
    assert parse_run_config(["--aa", "rand-m9-mstd0.5-inc1"]).aa == "rand-m9-mstd0.5-inc1"


def test_event_configs_evaluate_in_float32_as_published():
    for name in ("cifar10dvs", "dvsgesture"):  # the ablations inherit it
        cfg = parse_run_config(["-c", os.path.join(ROOT, "event", f"{name}.yaml")])
        assert (cfg.amp, cfg.eval_amp) == ("bf16", "none")
    assert parse_run_config(["-c", os.path.join(ROOT, "cifar10-100", "cifar10.yaml")]).eval_amp == "same"
    assert parse_run_config(["--eval-amp", "float32"]).eval_amp == "none"


def test_neuron_key_is_short_for_the_model_kwarg(tmp_path):
    config = tmp_path / "plif.yaml"
    base = os.path.join(ROOT, "demo", "digits.yaml")
    config.write_text(f"base: {base}\nneuron: plif\nmodel_kwargs: {{tau: 3.0}}\n")
    cfg = parse_run_config(["-c", str(config)])
    assert cfg.neuron == "plif" and cfg.model_kwargs["neuron"] == "plif" and cfg.model_kwargs["tau"] == 3.0
    assert parse_run_config(["-c", str(config), "--neuron", "CUBALIFNode"]).model_kwargs["neuron"] == "CUBALIFNode"
    assert "neuron" not in parse_run_config(["-c", base]).model_kwargs
    with pytest.raises(ConfigError, match=r"keys 'neuron' \(plif\) and 'model_kwargs' \(neuron: if\) disagree"):
        parse_run_config(["-c", str(config), "--model-kwargs", "neuron=if"])
    with pytest.raises(ConfigError, match="config key 'neuron': .*unknown neuron 'pliff'.*Did you mean: plif"):
        parse_run_config(["-c", str(config), "--neuron", "pliff"])
