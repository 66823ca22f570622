"""Every input is checked before work starts: numbers, relations, machine sizes, paths, YAML, model kwargs,
checkpoint causes, argparse commands and the top-level OSError handler (in-process; one subprocess)."""
import argparse
import errno
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from utils.config import cli
from utils.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, read_training_state
from utils.config import ConfigError, parse_config
from utils.training.preflight import check_run_paths, parse_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yaml(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _error(argv) -> str:
    with pytest.raises(ConfigError) as err:
        parse_run_config(argv)
    return str(err.value)


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("argv, key, value, fix", [
    (["--lr", "nan"], "lr", "nan", "finite"),
    (["--weight-decay", "inf"], "weight_decay", "inf", "finite"),
    (["--mixup=-inf"], "mixup", "-inf", "finite"),
    (["--opt-betas", "0.9", "nan"], "opt_betas", "nan", "finite"),
    (["--batch-size", "99999999999"], "batch_size", "99999999999", "--batch-size"),
    (["--epochs", "1e12"], "epochs", "1000000000000", "--epochs"),
    (["--T", "0"], "T", "0", ">= 1"),
    (["--val-batch-size", "0"], "val_batch_size", "0", "--val-batch-size"),
    (["--model-ema-decay", "1.5"], "model_ema_decay", "1.5", "between 0 and 1"),
    (["--scale", "0.5"], "scale", "[0.5]", "--scale"),
    (["--synthetic-size", "10", "20", "30"], "synthetic_size", "[10, 20, 30]", "needs 2 values"),
])
def test_numbers_are_finite_in_range_and_fit(argv, key, value, fix):
    msg = _error(argv)
    assert f"'{key}'" in msg and value in msg and fix in msg, msg


def test_nan_in_a_yaml_file_is_refused(tmp_path):
    msg = _error(["-c", _yaml(tmp_path, "lr: .nan\n")])
    assert "'lr'" in msg and "finite" in msg


@pytest.mark.parametrize("argv, pattern", [
    (["--lr", "1e-3", "--min-lr", "1e-2"], r"'min_lr' \(0.01\) is above lr 0.001.*--min-lr to at most 0.001"),
    (["--lr", "1e-3", "--warmup-epochs", "2", "--warmup-lr", "0.1"], r"'warmup_lr' \(0.1\) is above lr 0.001"),
    (["--blr", "1e-4", "--batch-size", "2", "--min-lr", "1e-5"], r"'min_lr' \(1e-05\) is above the lr 7.8125e-07 "
                                                                  r"\(= blr"),
    (["--scale", "0.9", "0.1"], r"'scale' is a \[min, max\] range.*\[0.9, 0.1\].*--scale 0.1 0.9"),
    (["--ratio", "2", "0.5"], r"'ratio' is a \[min, max\] range.*--ratio 0.5 2"),
    (["--cutmix-minmax", "0.8", "0.2"], r"'cutmix_minmax' is a \[min, max\]"),
    (["--opt-betas", "0.9", "1.0"], r"'opt_betas' must be below 1.*\[0.9, 1.0\]"),
    (["--opt-eps", "0"], r"'opt_eps' must be > 0.*got 0.0"),
    (["--clip-grad", "0"], r"'clip_grad' must be > 0"),
    (["--eval-metric", "ema_top1"], r"'eval_metric' is ema_top1 but model_ema is false.*--model-ema true"),
    (["--warmup-epochs", "5", "--epochs", "3"], r"warmup_epochs \(5\) is larger than epochs \(3\)"),
])
def test_relations_between_keys(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_run_config(argv)


def test_a_warmup_lr_above_the_lr_is_fine_without_warmup(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("warmup_epochs: 0\nwarmup_lr: 0.1\n")
    assert parse_run_config(["-c", str(config), "--lr", "1e-3"]).warmup_lr == 0.1
    # given on the command line without warm-up it would change nothing: refused (tests/test_options_used.py)
    with pytest.raises(ConfigError, match="--warmup-lr acts only with --warmup-epochs > 0"):
        parse_run_config(["--lr", "1e-3", "--warmup-lr", "0.1", "--warmup-epochs", "0"])


@pytest.mark.parametrize("key", ["threads", "workers"])
def test_sizes_a_machine_can_have(key):
    msg = _error([f"--{key}", "100000"])
    assert f"'{key}' is 100000" in msg and f"this machine has {os.cpu_count()} CPUs" in msg and "at most" in msg


# ------------------------------------------------------------------------------------------------ paths
def test_config_path_that_is_a_folder_or_missing(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.1\n")
    msg = _error(["-c", str(tmp_path)])
    assert f"{tmp_path} is a folder" in msg and "a.yaml" in msg
    assert "config file not found" in _error(["-c", str(tmp_path / "nope.yaml")])
    child = _yaml(tmp_path, "base: .\nlr: 0.1\n", "child.yaml")
    assert "'base: .'" in _error(["-c", child]) and "is a folder" in _error(["-c", child])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_config(tmp_path):
    p = _yaml(tmp_path, "lr: 0.1\n")
    os.chmod(p, 0)
    assert "not readable" in _error(["-c", p])


def _run_cfg(tmp_path, **kw):
    return SimpleNamespace(**{"output": str(tmp_path / "out"), "experiment": "x", "resume": "",
                              "initial_checkpoint": "", **kw}, get=lambda k, d=None: kw.get(k, d))


@pytest.mark.parametrize("experiment, pattern", [
    ("../escape", "leads outside the output root"), ("a/../../b", "leads outside the output root"),
    ("/abs/run", "is an absolute path"), (".", "leads outside the output root"),
])
def test_experiment_stays_inside_the_output_root(tmp_path, experiment, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_run_paths(_run_cfg(tmp_path, experiment=experiment))
    check_run_paths(_run_cfg(tmp_path, experiment="group/run1"))  # a subfolder is fine


def test_output_root_that_is_a_file_read_only_or_full(tmp_path, monkeypatch):
    (tmp_path / "out").write_text("")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'out'}.* is a file, not a folder"):
        check_run_paths(_run_cfg(tmp_path))
    os.remove(tmp_path / "out")
    real = os.statvfs(tmp_path)

    def fake(flag=0, free=real.f_bavail):
        fields = {n: getattr(real, n) for n in dir(real) if n.startswith("f_")}
        return lambda path: SimpleNamespace(**{**fields, "f_flag": flag, "f_bavail": free})

    monkeypatch.setattr(os, "statvfs", fake(flag=os.ST_RDONLY))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'out' / 'x'} is on a read-only file system"):
        check_run_paths(_run_cfg(tmp_path))
    monkeypatch.setattr(os, "statvfs", fake(free=0))
    with pytest.raises(ConfigError, match=r"is on a full file system \(0 bytes free"):
        check_run_paths(_run_cfg(tmp_path))
    assert not (tmp_path / "out").exists()  # nothing was created


def test_resume_and_initial_checkpoint_paths(tmp_path):
    with pytest.raises(ConfigError, match="--resume checkpoint not found"):
        check_run_paths(_run_cfg(tmp_path, resume=str(tmp_path / "none.pth.tar")))
    with pytest.raises(ConfigError, match="--initial-checkpoint checkpoint .* is a folder"):
        check_run_paths(_run_cfg(tmp_path, initial_checkpoint=str(tmp_path)))
    check_run_paths(_run_cfg(tmp_path, resume="auto"))


def test_validate_checks_the_energy_folder_before_work(tmp_path):
    import validate

    (tmp_path / "blocker").write_text("")
    ckpt = tmp_path / "m.pth.tar"
    torch.save({"w": torch.zeros(1)}, ckpt)
    cfg = parse_config(["--checkpoint", str(ckpt), "--energy", "true", "--energy-out", str(tmp_path / "blocker")],
                       extra=validate.VALIDATE_OPTIONS)
    with pytest.raises(ConfigError, match="--energy-output folder .*blocker is a file, not a folder"):
        validate.check_paths(cfg)


# ------------------------------------------------------------------------------------------------ YAML
def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    msg = _error(["-c", _yaml(tmp_path, "lr: 0.1\nepochs: 3\nlr: 0.2\n")])
    assert "key 'lr' is given twice (line 1 and line 3)" in msg and "c.yaml" in msg
    msg = _error(["-c", _yaml(tmp_path, "weight-decay: 0.1\nweight_decay: 0.2\n")])
    assert "given twice (line 1 and line 2)" in msg
    msg = _error(["-c", _yaml(tmp_path, "model_kwargs:\n  tau: 2.0\n  tau: 3.0\n")])
    assert "key 'tau' is given twice (line 2 and line 3)" in msg


def test_null_and_empty_mapping_in_a_child_config(tmp_path):
    _yaml(tmp_path, "model_kwargs: {embed_dims: 64, tau: 3.0}\nepochs: 7\nlr: 0.01\n", "base.yaml")

    def child(text):
        return parse_run_config(["-c", _yaml(tmp_path, "base: base.yaml\n" + text, "child.yaml")])

    assert child("model_kwargs: {neuron: if}\n").model_kwargs == {"embed_dims": 64, "tau": 3.0, "neuron": "if"}
    assert child("model_kwargs: {}\n").model_kwargs == {}  # replaces
    cfg = child("model_kwargs: null\nepochs: null\n")  # clears to the defaults
    assert cfg.model_kwargs == {} and cfg.epochs == 400 and cfg.lr == 0.01
    assert child("model_kwargs: {tau: null}\n").model_kwargs == {"embed_dims": 64, "tau": None}  # model default


def test_training_doc_describes_null_and_empty_mapping():
    text = open(os.path.join(ROOT, "docs", "training.md")).read()
    assert "model_kwargs: {}" in text and "null" in text and "given twice" in text


# ------------------------------------------------------------------------------------------------ model kwargs
@pytest.mark.parametrize("argv, pattern", [
    (["--model-kwargs", "embed_dim=64"], r"maxformer_cifar' has no setting 'embed_dim'. Did you mean: embed_dims"),
    (["--model", "max_resnet18", "--model-kwargs", "stem_widht=32"], r"Did you mean: stem_width"),
    (["--model", "spikformer_4_384", "--model-kwargs", "num_head=4"], r"Did you mean: num_heads"),
    (["--model-kwargs", "embed_dims=wide"], r"'embed_dims' of model 'maxformer_cifar' takes an integer or a list "
                                            r"of integers, got the string 'wide'"),
    (["--model-kwargs", "tau=fast"], r"'tau' .* takes a number, got the string 'fast'"),
    (["--model-kwargs", "stateful=3"], r"'stateful' .* takes true/false, got the number 3"),
    (["--model", "maxformer_cifr"], r"config key 'model': unknown model 'maxformer_cifr'. Did you mean"),
])
def test_model_kwargs_are_checked_against_the_model(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_run_config(argv)


def test_a_quoted_width_in_yaml_is_named_as_a_string(tmp_path, monkeypatch):
    import models.factory

    built = []
    monkeypatch.setattr(models.factory, "create_model", lambda *a, **k: built.append(a))
    msg = _error(["-c", _yaml(tmp_path, "model_kwargs: {embed_dims: '64'}\n")])
    assert "got the string '64'; write embed_dims: 64 without quotes" in msg and not built
    ok = parse_run_config(["-c", _yaml(tmp_path, "model_kwargs: {embed_dims: [32, 64, 128], v_reset: soft}\n")])
    assert ok.model_kwargs["v_reset"] == "soft"


# ------------------------------------------------------------------------------------------------ checkpoints
class _System:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


class _Plain:
    pass


def test_pickled_code_is_named_as_code_and_the_trust_flag_with_its_risk(tmp_path):
    zipped, raw = tmp_path / "code.pth.tar", tmp_path / "code.pkl"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _System()}, zipped)
    raw.write_bytes(pickle.dumps({"x": _System()}))
    for path in (zipped, raw):
        for flag in ("--trust-checkpoint", None):
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(path, trust_flag=flag)
            msg = str(err.value)
            assert "holds pickled code" in msg and "system" in msg and str(path) in msg, msg
            assert "--trust-checkpoint" in msg and "would load it and run that code" in msg, msg
            assert "truncated" not in msg, msg
            assert "only for files whose source you trust" in msg, msg


def test_pickled_objects_get_the_flag_that_loads_them(tmp_path):
    path = tmp_path / "obj.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Plain()}, path)
    with pytest.raises(CheckpointError, match=r"_Plain.*pass --trust-checkpoint: it unpickles the file in full, "
                                              r"which runs any code the file holds, so only for files you trust\.$"):
        read_checkpoint(path, trust_flag="--trust-checkpoint")
    with pytest.raises(CheckpointError) as err:  # resuming: a weights-only copy is a start, not a resume
        read_training_state(path)
    assert "--initial-checkpoint OUT.pth.tar" in str(err.value) and str(path) in str(err.value)
    assert read_checkpoint(path, trust_pickle=True)["state_dict"]["w"].shape == (1,)


def test_truncated_and_text_files_say_so(tmp_path):
    good = tmp_path / "good.pth.tar"
    torch.save({"state_dict": torch.nn.Linear(3, 3).state_dict()}, good)
    data = good.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 200):
        (tmp_path / "cut.pth.tar").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut.pth.tar.*is truncated"):
            read_checkpoint(tmp_path / "cut.pth.tar")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"a": list(range(100))})[:40])
    with pytest.raises(CheckpointError, match=r"cut.pkl.*is truncated"):
        read_checkpoint(tmp_path / "cut.pkl")
    (tmp_path / "c.yaml").write_text("model: maxformer_cifar\n")
    with pytest.raises(CheckpointError, match=r"c.yaml.*is not a PyTorch checkpoint: it is a text file"):
        read_checkpoint(tmp_path / "c.yaml", trust_flag="--trust-checkpoint")


def test_the_path_is_in_every_checkpoint_error(tmp_path):
    path = tmp_path / "list.pth.tar"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=f"{path}.*must be a dict"):
        load_checkpoint(torch.nn.Linear(1, 1), str(path))
    torch.save({"state_dict": torch.nn.Linear(1, 1).state_dict()}, path)
    with pytest.raises(CheckpointError, match=f"{path}.*no entry 'state_dict_ema'.*leave out --use-ema"):
        load_checkpoint(torch.nn.Linear(1, 1), str(path), key="state_dict_ema")


# ------------------------------------------------------------------------------------------------ argparse commands
def _cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, pattern", [
    (["--batch-size", "0"], r"--batch-size: expected a positive integer, got 0"),
    (["--steps", "nan"], r"--steps: expected a positive integer, got 'nan'"),
    (["--warmup", "-1"], r"--warmup: expected an integer >= 0, got -1"),
    (["--T", "99999999999"], r"--T: expected a positive integer \(at most 2147483647\)"),
    (["--threads", "100000"], r"--threads: expected a number of threads from 1 to \d+ \(this machine has"),
    (["--sweep-T", "1,x"], r"--sweep-T: expected comma-separated positive integers"),
    (["--device", "gpu7"], r"--device: expected cpu, cuda or cuda:N, got 'gpu7'"),
    (["--model-kwargs", "embed_dim=8"], r"has no setting 'embed_dim'. Did you mean: embed_dims"),
])
def test_benchmark_flags(argv, pattern, capsys):
    import benchmark

    assert __import__("re").search(pattern, _cli_error(benchmark.main, argv + ["--csv", ""], capsys))


def test_utils_commands_check_their_flags(tmp_path, capsys):
    from utils.training import checkpoint
    from utils.verify import conformance
    from utils.analysis import energy, tables
    from utils.tools import prepare_data, sweep

    afile = tmp_path / "f.txt"
    afile.write_text("x")
    cases = [
        (sweep.main, ["--parallel", "0", "--output", str(tmp_path)], r"--parallel: expected a number of runs"),
        (sweep.main, ["--mem-gb", "nan", "--output", str(tmp_path)], r"--mem-gb: expected a finite number > 0"),
        (sweep.main, ["--status", str(afile)], r"--status: .*f.txt is a file, not a folder"),
        (sweep.main, ["--seeds", "1e3"], r"--seeds: expected an integer"),
        (sweep.main, ["--output", str(afile / "sub")], r"--output.*: output folder .*f.txt .* is a file, not a folder"),
        (tables.main, ["--runs", str(afile)], r"--runs: .*is a file, not a folder"),
        (tables.main, ["--runs", str(tmp_path), "--out", str(afile)], r"--out: .*is a file, not a folder"),
        (tables.main, ["--img-size", "-3"], r"--img-size: expected a positive integer, got -3"),
        (energy.main, ["--model", "maxformer_cifar", "--out", str(afile / "x")], r"--out: .* is a file"),
        (energy.main, ["--model", "maxformer_cifar", "--e-mac", "inf"], r"--e-mac: expected a finite number"),
        (prepare_data.main, ["--dataset", "cifar10", "--root", str(tmp_path), "--T", "0"], r"--T: expected a pos"),
        (conformance.main, [str(tmp_path / "none.pt")], r"file not found: .*none.pt"),
        (conformance.main, [str(afile), "--threads", "0"], r"--threads: expected a number of threads"),
        (checkpoint.main, ["convert", str(afile), str(tmp_path)], r"OUT: .* is a folder; give a file name"),
    ]
    for main, argv, pattern in cases:
        assert __import__("re").search(pattern, _cli_error(main, argv, capsys)), (argv, pattern)


def test_frequency_checks_its_output_folder(tmp_path, capsys):
    from utils.analysis import frequency

    (tmp_path / "f").write_text("")
    err = _cli_error(frequency.main, ["toy", "--out", str(tmp_path / "f" / "sub")], capsys)
    assert "--out: " in err and "is a file, not a folder" in err


def test_number_types_refuse_non_finite_and_oversized():
    for text in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.positive_float(text)
    with pytest.raises(argparse.ArgumentTypeError, match="at most"):
        cli.positive_int(str(2 ** 40))
    assert cli.any_int(str(2 ** 40)) == 2 ** 40 and cli.int_list()("1, 4,16") == [1, 4, 16]


# ------------------------------------------------------------------------------------------------ top-level handler
def test_run_main_turns_os_errors_into_one_line(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/last.pth.tar")

    assert cli.run_main(main) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/data/out/last.pth.tar" in err and "disk is full" in err

    def bad_input(argv):
        raise ConfigError("config key 'x' is bad")

    assert cli.run_main(bad_input) == 2 and "error: config key 'x' is bad" in capsys.readouterr().err

    def refused_write(argv):  # a file written through utils.io.atomic (sweep.json, a benchmark CSV)
        from utils.io.atomic import FileWriteError

        raise FileWriteError("/data/out/sweep.json", OSError(errno.EROFS, "Read-only file system"))

    assert cli.run_main(refused_write) == 1
    err = capsys.readouterr().err
    assert "/data/out/sweep.json" in err and "read-only" in err, err


def test_train_main_reports_an_os_error_with_its_path(tmp_path, monkeypatch, capsys):
    import train
    from utils.training.run_folder import RunFolder

    def fail(self, command):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(self.path, "run.lock"))

    monkeypatch.setattr(RunFolder, "lock", fail)
    code = train.main(["--output", str(tmp_path), "--experiment", "ro", "--epochs", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "run.lock" in err and "read-only" in err and "Traceback" not in err


def test_a_command_prints_no_traceback_for_an_os_error(tmp_path):
    """Subprocess: a path that passes the checks but fails when written ends in one line naming it (exit 1)."""
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "args.yaml").write_text("model: maxformer_cifar\n")
    (tmp_path / "out" / "results.md").mkdir(parents=True)  # a folder where the table file goes
    proc = subprocess.run([sys.executable, "-m", "utils.analysis.tables", "--runs", str(runs),
                           "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot use {tmp_path / 'out' / 'results.md'}: it is a "
                                                f"folder: give a file"]


def test_config_files_that_are_links_or_not_utf8_say_so(tmp_path):
    os.symlink("loop.yaml", tmp_path / "loop.yaml")
    assert "is a symlink loop" in _error(["-c", str(tmp_path / "loop.yaml")])
    os.symlink("gone.yaml", tmp_path / "dangling.yaml")
    assert "is a symlink to gone.yaml, which does not exist" in _error(["-c", str(tmp_path / "dangling.yaml")])
    (tmp_path / "latin.yaml").write_bytes(b"lr: 0.1  # caf\xe9\n")
    msg = _error(["-c", str(tmp_path / "latin.yaml")])
    assert "is not UTF-8 text: byte 0xe9 at offset 14 (line 1); save the file as UTF-8" in msg
    assert "checkpoint" not in msg


def test_base_is_a_path_or_a_list_of_paths(tmp_path):
    _yaml(tmp_path, "epochs: 3\nlr: 0.5\nmodel_kwargs: {tau: 3.0}\n", "a.yaml")
    _yaml(tmp_path, "epochs: 5\nmodel_kwargs: {neuron: if}\n", "b.yaml")
    cfg = parse_run_config(["-c", _yaml(tmp_path, "base: [a.yaml, b.yaml]\nlr: 0.2\n")])
    assert (cfg.epochs, cfg.lr, cfg.model_kwargs) == (5, 0.2, {"tau": 3.0, "neuron": "if"})
    assert "give a file path, or a list of paths" in _error(["-c", _yaml(tmp_path, "base: {a: 1}\n")])
    assert "'base: nope.yaml': base config not found" in _error(["-c", _yaml(tmp_path, "base: [a.yaml, nope.yaml]\n")])


def test_an_experiment_name_too_long_for_a_folder_is_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="experiment name is too long: .* is 300 bytes, a folder name holds at "
                                          "most 255; choose a shorter --experiment"):
        check_run_paths(_run_cfg(tmp_path, experiment="e" * 300))
    check_run_paths(_run_cfg(tmp_path, experiment="group/" + "e" * 255))
    assert not (tmp_path / "out").exists()
