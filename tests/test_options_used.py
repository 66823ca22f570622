"""No option is ignored: every option an entry point accepts is read by it (statically), and the combinations a
run would not read are refused (benchmark.py, validate.py)."""
import argparse
import glob
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ("benchmark", "utils.analysis.energy", "utils.analysis.frequency", "utils.analysis.tables",
                "utils.verify.conformance", "utils.tools.sweep", "utils.tools.prepare_data", "utils.tools.hub_export",
                "utils.training.checkpoint")


def _dests(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _dests(sub, f"{prefix}{name} ")
        elif action.dest not in ("help", argparse.SUPPRESS):
            yield prefix, action.dest


def _read(dest: str, source: str) -> bool:
    return re.search(rf"\.{dest}\b|[\"']{dest}[\"']", source) is not None


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_option_of_an_entry_point_is_read(name):
    module = importlib.import_module(name)
    source = open(module.__file__, encoding="utf-8").read()
    unread = [f"{prefix}{dest}" for prefix, dest in _dests(module.build_parser()) if not _read(dest, source)]
    assert not unread, f"{name} accepts options it never reads: {unread}"


def test_every_config_key_is_read_outside_the_config_layer():
    """train.py / validate.py / doctor take the config keys: each one is read by the code that runs."""
    import validate
    from utils.config import all_options

    sources = [open(f, encoding="utf-8").read() for f in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
               if not any(p in f for p in (".venv", f"{os.sep}tests{os.sep}", f"utils{os.sep}config{os.sep}",
                                             "options.py"))]
    unread = [k for k in all_options(validate.VALIDATE_OPTIONS) if not any(_read(k, s) for s in sources)]
    assert not unread, f"config keys nobody reads: {unread}"


@pytest.mark.parametrize("args, message", [
    (["--sweep-T", "1,2"], "--sweep-T applies only with --sweep"),
    (["--sweep-batch-sizes", "2"], "--sweep-batch-sizes applies only with --sweep"),
    (["--plan-memory", "--device-memory", "8GB"], "--device-memory applies only with --max-batch"),
    (["--plan-memory", "--steps", "3", "--csv", "x.csv"], "--steps, --csv set a measurement; --plan-memory"),
])
def test_benchmark_refuses_options_the_run_would_not_read(args, message, capsys):
    import benchmark

    with pytest.raises(SystemExit) as info:
        benchmark.main(["--smoke", *args])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_validate_refuses_training_flags_on_its_command_line(tmp_path, capsys):
    import validate

    rc = validate.main(["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--checkpoint", str(tmp_path / "x.pth.tar"),
                        "--lr", "5", "--epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "--epochs, --lr: training settings that validate.py does not read" in err


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10", "--T", "8"], "--T sets the frames per event sample; cifar10 holds images"),
    (["--dataset", "dvsgesture", "--download"], "--download fetches cifar10, cifar100, cifar10dvs; dvsgesture is"),
    (["--dataset", "imagenet", "--download"], "imagenet is downloaded by hand"),
])
def test_prepare_data_refuses_options_a_dataset_does_not_read(args, message, tmp_path, capsys):
    from utils.tools import prepare_data

    with pytest.raises(SystemExit) as info:
        prepare_data.main([*args, "--data-dir", str(tmp_path)])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model-ema-decay", "0.99"], "--model-ema-decay acts only with --model-ema"),
    (["--wandb-project", "p"], "--wandb-project acts only with --log-wandb"),
    (["--clip-mode", "value"], "--clip-mode acts only with --clip-grad"),
    (["--warmup-epochs", "0", "--warmup-lr", "1e-5"], "--warmup-lr acts only with --warmup-epochs > 0"),
    (["--reprob", "0", "--remode", "const"], "--remode acts only with --reprob > 0"),
    (["--mixup", "0", "--cutmix", "0", "--mixup-off-epoch", "3"], "--mixup-off-epoch acts only with --mixup or"),
])
def test_train_flags_whose_switch_is_off_are_refused(argv, message):
    from utils.config import ConfigError
    from utils.training.preflight import parse_run_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_run_config(argv)
    switched_on = {"--model-ema-decay": ["--model-ema"], "--wandb-project": ["--log-wandb"],
                   "--clip-mode": ["--clip-grad", "1"]}.get(argv[0])
    if switched_on:
        parse_run_config(argv + switched_on)


def test_validate_energy_settings_need_energy(tmp_path, capsys):
    import validate

    rc = validate.main(["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--checkpoint", str(tmp_path / "x.pth.tar"),
                        "--energy-batches", "2"])
    assert rc == 2 and "--energy-batches: only with --energy" in capsys.readouterr().err


def test_validate_refuses_sizes_this_machine_cannot_run(capsys):
    import validate

    rc = validate.main(["-c", os.path.join(ROOT, "demo", "digits.yaml"), "--checkpoint", "x.pth.tar",
                        "--threads", str(10 * (os.cpu_count() or 1))])
    err = capsys.readouterr().err
    assert rc == 2 and "config key 'threads'" in err and "this machine has" in err
