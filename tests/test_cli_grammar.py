"""The one command-line grammar (docs/cli.md), checked on every entry point's parser, built in-process."""
from __future__ import annotations

import argparse
import importlib

import pytest

from utils.config.cli import BoolFlag, Parser


def hidden_flags(parser: argparse.ArgumentParser) -> dict:
    """The old spellings of ``parser`` (and its subcommands) -> the flag each is an alias of."""
    out = dict(getattr(parser, "aliases", {}))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.update(hidden_flags(sub))
    return out


ENTRY_POINTS = {
    "train.py": "train", "validate.py": "validate", "benchmark.py": "benchmark",
    "utils.tools.sweep": "utils.tools.sweep", "utils.analysis.tables": "utils.analysis.tables",
    "utils.analysis.energy": "utils.analysis.energy",
    "utils.analysis.frequency": "utils.analysis.frequency", "utils.tools.prepare_data": "utils.tools.prepare_data",
    "utils.training.checkpoint": "utils.training.checkpoint", "utils.verify.conformance": "utils.verify.conformance",
    "utils.tools.doctor": "utils.tools.doctor", "utils.tools.hub_export": "utils.tools.hub_export",
}
READS_CONFIG = ("train.py", "validate.py", "utils.tools.doctor", "utils.analysis.energy", "utils.tools.sweep")
HAS_T = ("train.py", "validate.py", "benchmark.py", "utils.analysis.energy", "utils.tools.prepare_data")
HAS_BATCH = ("train.py", "validate.py", "benchmark.py", "utils.analysis.energy")
# timm's train.py / validate.py names, where the concept exists here
TIMM_NAMES = {
    "train.py": ("--checkpoint-hist", "--pin-mem", "-j", "--workers", "--pretrained", "-vb", "--validation-batch-size",
                 "--amp",
                 "--amp-dtype", "--torchcompile", "-b", "--batch-size", "--model", "--num-classes", "--img-size",
                 "--resume", "--initial-checkpoint", "--output", "--experiment", "--device", "--seed",
                 "--channels-last", "--grad-checkpointing", "--crop-pct", "--mean", "--std", "--interpolation",
                 "--data-dir"),
    "validate.py": ("--pin-mem", "-j", "--workers", "--pretrained", "-vb", "--amp", "--amp-dtype", "--torchcompile",
                    "-b", "--batch-size", "--model", "--num-classes", "--img-size", "--checkpoint", "--use-ema",
                    "--results-file", "--device", "--channels-last", "--crop-pct", "--mean", "--std",
                    "--interpolation", "--data-dir"),
    "benchmark.py": ("--amp", "--amp-dtype", "--torchcompile", "-b", "--batch-size", "--model", "--num-classes",
                     "--img-size", "--channels-last", "--grad-checkpointing", "--device", "--model-kwargs"),
}


def parsers():
    """(command, parser) for every entry point and each of its subcommands."""
    out = []
    for name, module in ENTRY_POINTS.items():
        root = importlib.import_module(module).build_parser()
        stack = [(name, root)]
        while stack:
            label, p = stack.pop()
            out.append((label, p))
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack.extend((f"{label} {sub}", sp) for sub, sp in action.choices.items())
    return out


PARSERS = parsers()


def visible(p):
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


def kind(action) -> str:
    if isinstance(action, BoolFlag):
        return "switch"
    if action.nargs in ("+", "*"):
        return "list"
    return "value"


def flags_of(p):
    return {s for a in p._actions for s in a.option_strings}


def test_every_entry_point_speaks_the_shared_parser():
    for label, p in PARSERS:
        assert isinstance(p, Parser), f"{label}: build_parser() must return a utils.config.cli.Parser"


def test_same_flag_same_kind_and_choices_everywhere():
    seen = {}
    for label, p in PARSERS:
        for action in visible(p):
            choices = set(action.choices) if action.choices else None
            if choices is None and action.metavar and str(action.metavar).startswith("{"):
                choices = set(str(action.metavar)[1:-1].split(","))
            for flag in action.option_strings:
                if flag.startswith("--no-"):
                    continue
                if flag in seen:
                    other_label, other_kind, other_choices = seen[flag]
                    assert kind(action) == other_kind, \
                        f"{flag}: a {kind(action)} in {label}, a {other_kind} in {other_label}"
                    if choices and other_choices:
                        assert choices <= other_choices or other_choices <= choices, \
                            f"{flag}: choices {sorted(choices)} in {label} vs {sorted(other_choices)} in {other_label}"
                else:
                    seen[flag] = (label, kind(action), choices)


def test_checkpoint_is_a_path_and_compile_a_switch_everywhere():
    for label, p in PARSERS:
        for action in visible(p):
            if "--checkpoint" in action.option_strings:
                assert kind(action) == "value" and not isinstance(action, argparse._AppendAction), label
            if "--compile" in action.option_strings or "--fastpath" in action.option_strings:
                assert isinstance(action, BoolFlag), f"{label}: {action.option_strings} must be a switch"
    assert "--eager" not in {s for a in visible(dict(PARSERS)["benchmark.py"]) for s in a.option_strings}


def test_every_switch_takes_the_same_forms():
    assert issubclass(BoolFlag, argparse.BooleanOptionalAction)  # argparse's own switch; the value forms map onto it
    for label, p in PARSERS:
        for action in visible(p):
            assert action.nargs != 0 or isinstance(action, BoolFlag), \
                f"{label}: {action.option_strings} is a bare switch; use Parser.add_bool"
    p = Parser()
    p.add_bool("--download")
    p.add_argument("files", nargs="*")
    for argv, want in ((["--download"], True), (["--no-download"], False), (["--download", "false"], False),
                       (["--download=no"], False), (["--download", "true"], True), (["--download=1"], True),
                       ([], False)):
        assert p.parse_args(argv).download is want, argv
    assert p.parse_args(["--download", "a.yaml"]).files == ["a.yaml"]  # a switch never swallows a positional
    with pytest.raises(SystemExit):
        p.parse_args(["--download=maybe"])


@pytest.mark.parametrize("label, argv, dest", [
    ("train.py", ["--download", "false"], "download"), ("train.py", ["--no-download"], "download"),
    ("train.py", ["--download=off"], "download"),
    ("utils.tools.prepare_data", ["--dataset", "cifar10", "--data-dir", "d", "--download", "false"], "download"),
    ("utils.tools.prepare_data", ["--dataset", "cifar10", "--data-dir", "d", "--no-download"], "download"),
    ("benchmark.py", ["--smoke", "false"], "smoke"), ("utils.tools.sweep", ["--dry-run", "no", "a.yaml"], "dry_run"),
])
def test_the_false_forms_switch_off_on_every_command(label, argv, dest):
    assert getattr(dict(PARSERS)[label].parse_args(argv), dest) is False


def test_no_hidden_modes_and_hidden_flags_are_only_aliases():
    import validate

    for label, p in PARSERS:
        text = p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for mode in action.choices:
                    assert mode in text, f"{label} -h does not show its mode {mode}"
            elif action.option_strings and action.help == argparse.SUPPRESS:
                # hidden: an old spelling, or (validate.py) a training key accepted for configs' sake
                ok = all(s in hidden_flags(p) for s in action.option_strings) or (
                    label == "validate.py" and action.dest not in validate.EVAL_KEYS)
                assert ok, f"{label}: {action.option_strings} is hidden but is no alias"
    assert "--runs" in dict(PARSERS)["utils.analysis.tables runs"].format_help()


def test_validate_help_lists_only_evaluation_options():
    text = dict(PARSERS)["validate.py"].format_help()
    for flag in ("--checkpoint", "--pretrained", "--model", "--batch-size", "-T", "--amp", "--data-dir", "--device",
                 "--results-file", "--use-ema"):
        assert flag in text, flag
    for flag in ("--epochs", "--lr ", "--mixup", "--opt ", "--weight-decay", "--warmup-epochs", "--model-ema"):
        assert flag not in text, f"validate.py -h lists the training flag {flag}"


def test_help_shows_each_default_at_most_once():
    for label, p in PARSERS:
        formatter = p._get_formatter()
        for action in visible(p):
            text = formatter._expand_help(action)
            assert text.count("default:") <= 1, \
                f"{label} {action.option_strings[0]}: {text!r}"


def test_shared_concepts_have_one_spelling():
    by_label = dict(PARSERS)
    for label in READS_CONFIG:
        assert {"-c", "--config"} <= flags_of(by_label[label]), label
    for label in HAS_T:
        assert {"-T", "--T"} <= flags_of(by_label[label]), label
    for label in HAS_BATCH:
        assert {"-b", "--batch-size"} <= flags_of(by_label[label]), label
    for label, names in TIMM_NAMES.items():
        missing = set(names) - flags_of(by_label[label])
        assert not missing, f"{label} lacks timm's {sorted(missing)}"
    for label, p in PARSERS:  # outputs: --output (folders), --csv / --results-file / --figure (files)
        for action in visible(p):
            outs = [s for s in action.option_strings if s == "--out" or s.endswith("-out")]
            assert not outs or any(s.endswith("output") for s in action.option_strings), \
                f"{label}: {outs} without the --output spelling"
        if "--data-path" in flags_of(p) or "--root" in flags_of(p):
            assert "--data-dir" in flags_of(p), label


# ------------------------------------------------------------------------------------------ old spellings still work
def test_old_spellings_of_train_and_validate_keys():
    from utils.config import parse_config

    cfg = parse_config(["--data-path", "d1", "--pin-memory", "false", "--val-batch-size", "8", "--compile", "true",
                        "--amp", "bf16", "--workers", "0"])
    new = parse_config(["--data-dir", "d1", "--no-pin-mem", "-vb", "8", "--torchcompile", "--amp-dtype", "bfloat16",
                        "-j", "0"])
    for key in ("data_path", "pin_memory", "val_batch_size", "compile", "amp", "workers"):
        assert getattr(cfg, key) == getattr(new, key), key
    assert (new.pin_memory, new.val_batch_size, new.compile, new.amp) == (False, 8, True, "bf16")
    assert parse_config(["--deterministic", "null"]).deterministic is None  # tri-state keys also take none


def test_timm_spellings_with_their_timm_values():
    from utils.config import parse_config

    bare = parse_config(["--amp", "--torchcompile", "inductor", "--epochs", "3"])  # as a timm user writes them
    assert (bare.amp, bare.compile, bare.epochs) == ("bf16", True, 3)
    assert parse_config(["--amp", "fp16"]).amp == "fp16" and parse_config(["--torchcompile=inductor"]).compile
    assert parse_config([]).amp == "none" and not parse_config([]).compile


def test_old_spellings_of_the_tools():
    import benchmark

    by_label = dict(PARSERS)
    b = by_label["benchmark.py"]
    assert b.parse_args(["--eager"]).fastpath is False
    for argv, scope in ((["--compile", "blocks"], "blocks"), (["--compile=neurons"], "neurons"),
                        (["--compile"], "model"), (["--compile", "none"], "none"), (["--no-compile"], "none"),
                        ([], None)):
        assert benchmark.compile_scope(b.parse_args(argv)) == scope, argv
    assert b.parse_args(["--amp", "bfloat16"]).amp == "bf16"
    assert b.parse_args(["--no-subprocess"]).subprocess is False
    e = by_label["utils.analysis.energy"].parse_args(["--model", "m", "--out", "o", "--data", __file__])
    assert (e.output, e.config) == ("o", __file__)
    assert by_label["utils.tools.prepare_data"].parse_args(["--dataset", "cifar10", "--root", "r"]).root == "r"
    import utils.analysis.tables as tables

    t = tables.build_parser()
    assert t.parse_args(["--checkpoint", "a=b"]).weights == ["a=b"]  # no mode: params
    assert t.parse_args(["--runs", ".", "--out", "o"]).output == "o"
    assert t.parse_args(["compare-log", "--run", __file__, "--reference", "x", "--out", "f.png"]).figure == "f.png"
    f = by_label["utils.analysis.frequency"].parse_args(["spectra", "--model", "m", "--checkpoint", "p", "--out", "o"])
    assert (f.weights, f.output) == (["p"], "o")
    s = by_label["utils.tools.sweep"].parse_args(["a.yaml", "-c", "b.yaml", "-c", "c.yaml"])
    assert s.configs + s.more_configs == ["a.yaml", "b.yaml", "c.yaml"]


def test_benchmark_sweep_children_drop_the_sweep_switch_in_any_spelling():
    import benchmark

    p = benchmark.build_parser()
    child = benchmark._child_argv(p.normalize(["--sweep", "true", "--compile", "blocks", "-T", "2"]), 1, 4)
    assert "--sweep" not in child and "true" not in child and "2" not in child
    assert benchmark.compile_scope(p.parse_args(child)) == "blocks" and p.parse_args(child).T == 1


def test_timm_flag_names_mean_what_they_mean_in_timm():
    from utils.config import ConfigError, parse_config

    cfg = parse_config(["--grad-accum-steps", "4", "--in-chans", "3", "--gp", "avg", "--drop-path", "0",
                        "--model-kwargs", "neuron=if", "-o", "runs"])
    assert (cfg.accum_steps, cfg.output) == (4, "runs")
    assert cfg.model_kwargs == {"neuron": "if", "in_chans": 3, "global_pool": "avg", "drop_path_rate": 0}
    cfg = parse_config(["--input-size", "3", "48", "48"])
    assert (cfg.img_size, cfg.model_kwargs) == (48, {"in_chans": 3})
    with pytest.raises(ConfigError, match="--input-size takes C H W with H = W"):
        parse_config(["--input-size", "3", "48", "32"])
    with pytest.raises(ConfigError, match="--lr-base: timm scales it .* here the base lr is --blr"):
        parse_config(["--lr-base", "0.1"])
    with pytest.raises(ConfigError, match="drop_path_rate is not supported"):  # the models have no DropPath
        parse_config(["--drop-path", "0.1"])
    text = open("docs/cli.md").read()
    for flag in ("--grad-accum-steps", "--lr-base", "--in-chans", "--input-size", "--gp", "--drop-path", "-o"):
        assert flag in text, flag
