"""Run configuration: YAML file -> defaults -> command-line overrides, with clear errors.

``parse_config(argv)`` implements ``python train.py -c CONFIG [--key value ...]``:

* every key of :data:`TRAIN_OPTIONS` and of ``utils.data.DATA_OPTIONS`` is a YAML key and a flag
  (``--weight-decay`` and ``--weight_decay`` both work);
* a YAML file may start from another one with ``base: relative/path.yaml`` (mappings are merged,
  the child wins), which is how the ablation configs add only their model changes; a relative
  ``data_path`` in a YAML file is relative to that file's folder too (on the command line: to the
  current folder);
* values are coerced to the key's type, so ``6e-2`` (a *string* for PyYAML) becomes 0.06, and checked
  against the key's range and choices;
* numbers must be finite and within the key's range (integers also within what their use can hold);
  :data:`RELATIONS` checks the keys against each other (``min_lr`` never above the lr, a [min, max] pair
  in order, ...), and ``model``/``model_kwargs`` are checked against the model's constructor before
  anything is built or written;
* YAML is strict: a key given twice in one mapping is refused with both line numbers; in a child config
  ``key: null`` restores the key's default and ``key: {}`` replaces an inherited mapping (a non-empty
  mapping is merged into the inherited one);
* an unknown key, a value of the wrong type or range, an empty, unreadable or non-text config file raises
  :class:`ConfigError` naming the key, the value and the fix; the entry points print it and exit with
  status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml

from utils.config.cli import INT32_MAX, BoolFlag, Parser, readable_file_problem
from utils.errors import INPUT_ERRORS
from utils.options import ConfigError, Option  # shared with utils.data, which defines the data keys

__all__ = ["ConfigError", "Option", "Config", "TRAIN_OPTIONS", "parse_config", "load_yaml", "all_options"]


def _o(default, type_=None, help="", choices=None, short=None, low=None, high=None, length=None):
    return Option(default, type_, help, choices, short, low, high, length)




# Keys owned by the training engine. Data keys come from utils.data.DATA_OPTIONS.
TRAIN_OPTIONS: Dict[str, Option] = {
    # run / output
    "experiment": _o("", str, "run name; outputs go to <output>/<experiment> (default: config file name)"),
    "output": _o("output", str, "root folder of run folders"),
    "resume": _o("", str, "checkpoint to resume from, or 'auto' (= <output>/<experiment>/last.pth.tar if present)"),
    "overwrite": _o(False, bool, "start afresh in a run folder that already holds a run, deleting its outputs"),
    "initial_checkpoint": _o("", str, "weights to start from (model only, e.g. the authors' files)"),
    "checkpoint_hist": _o(0, int, "also keep the checkpoints of the N best epochs by eval_metric as "
                          "checkpoint-<epoch>.pth.tar (timm's --checkpoint-hist); 0 = last and best only", low=0),
    "pretrained": _o(False, bool, "start from the model's released weights (timm pretrained cfg, e.g. --model "
                     "maxformer_10_768.t4_in1k; downloaded once); a new classifier if num_classes differs"),
    "seed": _o(42, int, "global seed (per-rank and per-epoch seeds derive from it)", low=-2 ** 63, high=2 ** 63 - 1),
    "deterministic": _o(None, bool, "the reproducibility switch: true = deterministic algorithms, fp32 without TF32 "
                        "(bit-exact resume); false = fastest (cuDNN autotuning, TF32 on CUDA); null (default) = "
                        "true on CPU, false on CUDA"),
    "device": _o("auto", str, "auto | cpu | cuda | cuda:N"),
    "threads": _o(0, int, "CPU threads per process; 0 = automatic: the cores other processes leave free, "
                  "re-measured during the run (OMP_NUM_THREADS, when set, is kept)", low=0),
    # model
    "model": _o("maxformer_cifar", str, "registered model name (timm.create_model)"),
    "model_kwargs": _o({}, dict, "extra constructor kwargs, e.g. {embed_dims: 64, neuron: if}; CLI: k=v ... adds to "
                        "the YAML's; start with 'none' to replace them"),
    "num_classes": _o(None, int, "number of classes, >= the dataset's (default: from the dataset)", low=1),
    "T": _o(4, int, "time steps (model attribute .T)", short="-T", low=1),
    # schedule / optimisation
    "epochs": _o(400, int, "epochs of the lr schedule (warmup included), cooldown epochs come on top", low=1),
    "cooldown_epochs": _o(0, int, "epochs at min_lr after the schedule", low=0),
    "warmup_epochs": _o(0, int, "linear warmup epochs", low=0),
    "warmup_lr": _o(1e-5, float, "lr at the start of warmup", low=0),
    "warmup_prefix": _o(False, bool, "cosine counts from the end of warmup (MAE style) instead of from epoch 0"),
    "lr": _o(1e-3, float, "peak learning rate (ignored when blr is set)", low=0),
    "blr": _o(None, float, "base lr: lr = blr * effective_batch / 256 (ImageNet recipe)", low=0),
    "min_lr": _o(1e-5, float, "final lr of the cosine", low=0),
    "sched": _o("cosine", str, "timm scheduler name (cosine, step, constant, none, ...)"),
    "sched_on_updates": _o(False, bool, "step the schedule every optimizer update instead of every epoch"),
    "opt": _o("adamw", str, "timm optimizer name"),
    "opt_eps": _o(None, float, "optimizer epsilon (default: optimizer default)", low=0),
    "opt_betas": _o(None, list, "optimizer betas, e.g. [0.9, 0.999]", low=0, high=1, length=2),
    "momentum": _o(0.9, float, "SGD momentum", low=0, high=1),
    "weight_decay": _o(0.05, float, "weight decay (not applied to 1-D parameters and biases)", low=0),
    "batch_size": _o(64, int, "batch size per process", short="-b", low=1),
    "val_batch_size": _o(None, int, "eval batch size per process (default: batch_size)", low=1),
    "accum_steps": _o(1, int, "gradient accumulation steps", low=1),
    "clip_grad": _o(None, float, "gradient clipping threshold (off when null)", low=0),
    "clip_mode": _o("norm", str, "norm | value | agc", choices=("norm", "value", "agc")),
    "mixup_off_epoch": _o(0, int, "turn mixup/cutmix off from this epoch (targets stay smoothed); 0 = never", low=0),
    "reference_batch": _o(None, int, "effective batch of the published recipe (a warning if yours differs)", low=1),
    # engine switches
    "amp": _o("none", str, "mixed precision: none | bf16 | fp16 (fp16 needs CUDA); a bare --amp means bf16",
               choices=("none", "bf16", "fp16")),
    "channels_last": _o(False, bool, "channels-last memory format for 4-D inputs"),
    "fastpath": _o(True, bool, "utils.training.fastpath train defaults, as benchmark.py: PyTorch neurons compiled "
                   "(float32: within the golden tolerances; under amp also whole-model compile + channels-last); "
                   "false = plain eager path (spikingjelly neurons, no compile)"),
    "compile": _o(False, bool, "with fastpath: torch.compile the whole model (faster; backward not bitwise-faithful: "
                  "near-threshold spikes may flip)"),
    "neuron_impl": _o("auto", str, "neuron kernels: auto (the fast path's PyTorch loop; spikingjelly's without "
                      "fastpath) | spikingjelly | torch | triton (spikingjelly's Triton kernels on any device; CPU "
                      "tensors need TRITON_INTERPRET=1)", choices=("auto", "spikingjelly", "torch", "triton")),
    "grad_checkpointing": _o(False, bool, "activation checkpointing (model must support it)"),
    "compact_spikes": _o(False, bool, "with fastpath: convolutions save binary (spike) inputs for backward as bool, "
                         "4x smaller, exact (a memory option, see README 'Memory options')"),
    "sync_bn": _o(False, bool, "SyncBatchNorm across processes"),
    "dist_backend": _o("auto", str, "auto | nccl | gloo"),
    "dist_timeout": _o(300.0, float, "seconds a process may take to connect to the run's others at start-up "
                       "(rank 0's store, every rank) before it gives up with an error naming what it waited for",
                       low=1),
    "model_ema": _o(False, bool, "keep an EMA of the weights (timm ModelEmaV3) and evaluate it"),
    "model_ema_decay": _o(0.9998, float, "EMA decay", low=0, high=1),
    "model_ema_warmup": _o(False, bool, "EMA decay warmup"),
    "eval_metric": _o("top1", str, "metric that selects best.pth.tar: top1 | ema_top1", choices=("top1", "ema_top1")),
    # logging
    "log_interval": _o(20, int, "steps between loss syncs / progress-bar and TensorBoard updates", low=1),
    "progress": _o(True, bool, "tqdm progress bar"),
    "max_train_batches": _o(0, int, "cap on train batches per epoch (0 = all); for smoke tests", low=0),
    "max_eval_batches": _o(0, int, "cap on eval batches (0 = all); for smoke tests", low=0),
    "tensorboard": _o(True, bool, "write TensorBoard events to the run folder"),
    "plot": _o(True, bool, "write learning_curve.png to the run folder"),
    "log_wandb": _o(False, bool, "log to Weights & Biases (WANDB_MODE=offline works without network)"),
    "wandb_project": _o("", str, "W&B project (default: $WANDB_PROJECT or 'maxformer')"),
    "wandb_entity": _o("", str, "W&B entity (default: $WANDB_ENTITY or your default entity)"),
}

# Keys whose relative paths in a YAML file are relative to that file's folder.
YAML_RELATIVE_PATHS = ("data_path",)


def _data_options() -> Dict[str, Option]:
    from utils.data import DATA_OPTIONS

    return DATA_OPTIONS


def all_options(extra: Optional[Dict[str, Option]] = None) -> Dict[str, Option]:
    """Every valid key: training keys, data keys, and the caller's ``extra`` keys."""
    opts = dict(_data_options())
    opts.update(TRAIN_OPTIONS)
    if extra:
        opts.update(extra)
    return opts


class Config(argparse.Namespace):
    """Resolved configuration: attribute access (``cfg.lr``) plus ``cfg["lr"]``/``get``/``to_dict``."""

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key):
        return hasattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def to_dict(self) -> Dict[str, Any]:
        return dict(vars(self))


# ----------------------------------------------------------------------------------------------
# value coercion
_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f"}


def _type_name(t) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(t, getattr(t, "__name__", str(t)))


def _coerce_scalar(value, t, where: str):
    def bad():
        return ConfigError(f"{where}: expected {_type_name(t)}, got {value!r}")

    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if t is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
            try:
                f = float(value.strip())
            except ValueError:
                raise bad() from None
            if f.is_integer():
                return int(f)
        raise bad()
    if t is float:
        if isinstance(value, bool):
            raise bad()
        try:
            out = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad() from None
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r} (nan and inf are no setting)")
        return out
    if t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    return value


def _parse_yaml_scalar(text: str):
    """A CLI string as YAML would read it, with '6e-2'-style numbers as floats."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v) if any(c in v.lower() for c in ".e") and not v.lower().startswith(("n", "i")) else v
        except ValueError:
            return v
    return v


def coerce(key: str, value, opt: Option, from_cli: bool = False):
    """Return ``value`` converted to ``opt``'s type, or raise :class:`ConfigError`."""
    where = f"config key '{key}'"
    kind = opt.kind
    if from_cli and opt.default is None and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        value = None  # '--aa none' switches off an option that is off by default
    if value is None:
        if opt.default is None or kind is None:
            return None
        if kind is str:
            return ""
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got null")
    if kind is None:
        if from_cli and isinstance(value, list):  # nargs="+": one value or a list
            vals = [_parse_yaml_scalar(v) for v in value]
            return vals[0] if len(vals) == 1 else vals
        return _parse_yaml_scalar(value) if from_cli and isinstance(value, str) else value
    if kind in (list, tuple):
        if from_cli and isinstance(value, str):
            value = [value]
        if isinstance(value, str):  # YAML "0.5, 0.5"
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem_t = None
        if opt.default:
            elem_t = type(opt.default[0])
        elif opt.type is list:
            elem_t = float
        out = []
        for i, v in enumerate(value):
            if isinstance(v, str) and elem_t is None:
                v = _parse_yaml_scalar(v)
            out.append(_coerce_scalar(v, elem_t, f"{where}[{i}]") if elem_t else v)
        return out
    if kind is dict:
        if from_cli and isinstance(value, (list, str)):
            items = [value] if isinstance(value, str) else value
            out = {}
            if items and str(items[0]).lower() in ("none", "null", "{}"):  # drop the YAML's mapping
                out["__reset__"] = True
                items = items[1:]
            for item in items:
                if "=" not in item:
                    raise ConfigError(f"{where}: expected key=value pairs, got {item!r}")
                k, v = item.split("=", 1)
                out[k.strip().replace("-", "_")] = _parse_yaml_scalar(v)
            return out
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if from_cli and kind is not str and isinstance(value, str):
        value = value if kind in (bool, int, float) else _parse_yaml_scalar(value)
    if isinstance(value, str):
        value = VALUE_SPELLINGS.get(key, {}).get(value.strip().lower(), value)
    out = _coerce_scalar(value, kind, where)
    if opt.choices is not None and out not in opt.choices:
        raise ConfigError(f"{where}: {out!r} is not one of {', '.join(map(str, opt.choices))}")
    return out


def _unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run with --help to list the valid keys."
    return ConfigError(f"unknown config key '{key}' ({where}).{hint}")


# ----------------------------------------------------------------------------------------------
# YAML loading
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (``a-b`` and ``a_b`` are one key)."""

    def construct_mapping(self, node, deep=False):
        lines: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                norm = key.replace("-", "_") if isinstance(key, str) else key
                first = lines.get(norm)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(f"key '{key}' is given twice (line {first} and line {line}); keep one of them")
            lines[norm] = line
        return super().construct_mapping(node, deep)


def config_file_error(path: str, what: str = "config file") -> Optional[str]:
    """Why ``path`` cannot be read as a file (missing, a folder, unreadable), or None when it can."""
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))[:3] \
            if os.access(path, os.R_OK | os.X_OK) else []
        hint = f" (in it: {', '.join(inside)})" if inside else ""
        return f"{what} {path} is a folder; give a YAML file{hint}"
    return readable_file_problem(path, what)


def load_yaml(path: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """Read a YAML config (following ``base:`` chains); keys normalised to underscores.

    In a child config ``key: null`` stands for the key's default (it clears the inherited value) and an empty
    mapping replaces the inherited one; a non-empty mapping is merged into the inherited one.
    """
    path = os.path.abspath(os.path.expanduser(path))
    problem = config_file_error(path)
    if problem:
        raise ConfigError(problem)
    _seen = (_seen or []) + [path]
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a YAML config (binary content). -c takes a YAML file such as "
                          f"cifar10-100/cifar10.yaml; a checkpoint goes to --resume / --initial-checkpoint "
                          f"(validate.py: --checkpoint)") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config needs at least one key (e.g. 'model: maxformer_cifar'); "
                          f"to run with every default, leave out -c")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in YAML_RELATIVE_PATHS:
        value = data.get(key)
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            data[key] = os.path.normpath(os.path.join(os.path.dirname(path), value))
    base = data.pop("base", None)
    if base:
        base_path = os.path.join(os.path.dirname(path), str(base))
        if os.path.abspath(base_path) in _seen:
            raise ConfigError(f"{path}: 'base' chain loops back to {base_path}")
        problem = config_file_error(os.path.abspath(base_path), "base config")
        if problem:
            raise ConfigError(f"{path}: 'base: {base}': {problem}")
        parent = load_yaml(base_path, _seen)
        for k, v in data.items():
            if isinstance(v, dict) and v and isinstance(parent.get(k), dict):
                parent[k] = {**parent[k], **v}
            else:
                parent[k] = v
        data = parent
    return data


# ----------------------------------------------------------------------------------------------
class _Parser(Parser):
    def error(self, message):  # never print usage + exit from deep inside; let the caller report
        raise ConfigError(message)


# timm's names (and other spellings) of config keys; listed in -h next to the key's own flag (docs/cli.md)
KEY_FLAGS: Dict[str, Sequence[str]] = {
    "workers": ("-j",),
    "pin_memory": ("--pin-mem",),
    "val_batch_size": ("-vb", "--validation-batch-size"),
    "compile": ("--torchcompile",),
    "amp": ("--amp-dtype",),
}
# the grammar's name of a key whose own spelling predates it (docs/cli.md); listed first
FIRST_FLAGS: Dict[str, str] = {"data_path": "--data-dir", "energy_out": "--energy-output"}
# values spelled as timm/PyTorch spell them -> the key's own value
VALUE_SPELLINGS: Dict[str, Dict[str, str]] = {
    "amp": {"bfloat16": "bf16", "float16": "fp16", "float32": "none"},
}
# what a valued key's flag means without a value (timm's bare ``--amp``: mixed precision on)
BARE_VALUES: Dict[str, str] = {"amp": "bf16"}


def _timm_values(args: List[str]) -> List[str]:
    """timm's ``--torchcompile inductor`` (the backend, the only one used here) is the switch ``--torchcompile``."""
    out: List[str] = []
    for token in args:
        if token == "--torchcompile=inductor":
            token = "--torchcompile"
        elif token == "inductor" and out and out[-1] == "--torchcompile":
            continue
        out.append(token)
    return out


def key_flags(key: str, opt: Option) -> List[str]:
    """Every command-line spelling of config key ``key``: short, timm's name, dashes, underscores."""
    flags = [f"--{key.replace('_', '-')}", *KEY_FLAGS.get(key, ())]
    if key in FIRST_FLAGS:
        flags.insert(0, FIRST_FLAGS[key])
    if "_" in key:
        flags.append(f"--{key}")
    if opt.short:
        flags.insert(0, opt.short)
    return flags


def build_arg_parser(options: Dict[str, Option], description: str = "",
                     shown: Optional[Iterable[str]] = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per key (dash and underscore spellings, timm's name from
    :data:`KEY_FLAGS`). Switches take ``--x``, ``--no-x`` and ``--x true|false``. With ``shown``, only those keys
    are listed by ``-h``; the others are still accepted (hidden)."""
    p = _Parser(description=description, allow_abbrev=False, legacy=_timm_values)
    p.add_argument("-c", "--config", default="", help="YAML config file")
    shown = None if shown is None else set(shown)
    for key, opt in sorted(options.items()):
        flags = key_flags(key, opt)
        kind = opt.kind
        text = f"{opt.help} (default: {_shown_default(opt)})" if "default" not in opt.help else opt.help
        if shown is not None and key not in shown:
            text = argparse.SUPPRESS
        kw: Dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        if kind is bool:
            kw.update(action=BoolFlag, allow_none=opt.default is None)
        elif kind in (list, tuple, dict, None):
            kw.update(nargs="+", metavar="K=V" if kind is dict else "V")
        elif opt.choices:
            kw.update(metavar="{" + ",".join(map(str, opt.choices)) + "}")
        if key in BARE_VALUES:
            kw.update(nargs="?", const=BARE_VALUES[key])
        p.add_argument(*flags, **kw)
    return p


def _shown_default(opt: Option) -> str:
    if isinstance(opt.default, bool):
        return "true" if opt.default else "false"
    return "null" if opt.default is None else repr(opt.default)


def parse_config(argv: Optional[Sequence[str]] = None, extra: Optional[Dict[str, Option]] = None,
                 description: str = "", shown: Optional[Iterable[str]] = None) -> Config:
    """Resolve ``-c CONFIG`` plus CLI overrides into a :class:`Config` (raises :class:`ConfigError`).
    ``shown``: the keys ``-h`` lists (default: all)."""
    options = all_options(extra)
    parser = build_arg_parser(options, description, shown)
    args, unknown = parser.parse_known_args(argv)
    for tok in unknown:
        if tok.startswith("-"):
            name = tok.lstrip("-").split("=", 1)[0].replace("-", "_")
            raise _unknown_key_error(name, options, "command line")
        raise ConfigError(f"unexpected argument {tok!r} (values follow a --key)")
    cli = {k: v for k, v in vars(args).items() if k != "config"}

    values = {k: o.default for k, o in options.items()}
    values = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
              for k, v in values.items()}
    if args.config:
        for k, v in load_yaml(args.config).items():
            if k not in options:
                raise _unknown_key_error(k, options, f"in {args.config}")
            if v is not None:  # null: the key's default
                values[k] = coerce(k, v, options[k])
    for k, v in cli.items():
        new = coerce(k, v, options[k], from_cli=True)
        if options[k].kind is dict and isinstance(values.get(k), dict) and not new.pop("__reset__", False):
            new = {**values[k], **new}  # --model-kwargs adds to / overrides the YAML mapping
        if k in YAML_RELATIVE_PATHS and new:  # relative to the current folder, kept so in args.yaml
            new = os.path.abspath(os.path.expanduser(new))
        values[k] = new
    cfg = Config(**values)
    cfg.config = os.path.abspath(args.config) if args.config else ""
    if "experiment" in values and not cfg.experiment:
        cfg.experiment = os.path.splitext(os.path.basename(args.config))[0] if args.config else "run"
    _check_ranges(cfg, options)
    check_relations(cfg)
    if "dataset" in cfg:
        from utils.data import check_data_config

        check_data_config(cfg)
    if "model" in cfg:
        check_model(cfg)
    return cfg


def check_run_paths(cfg) -> None:
    """Before a run writes anything: ``<output>/<experiment>`` stays inside the output root and can be written
    (not a file, not read-only, not full), and the checkpoints it reads exist and are readable files."""
    from utils.config.cli import inside_problem, readable_file_problem, writable_folder_problem

    problem = (inside_problem(cfg.output, cfg.experiment)
               or writable_folder_problem(os.path.join(cfg.output, cfg.experiment), "run folder"))
    for key in ("resume", "initial_checkpoint"):
        path = cfg.get(key)
        if not problem and path and not (key == "resume" and path == "auto"):
            problem = readable_file_problem(os.path.expanduser(path), f"{_flag(key)} checkpoint")
    if problem:
        raise ConfigError(problem)


def check_model(cfg) -> None:
    """``cfg.model`` is registered and ``cfg.model_kwargs`` fit its constructor (names and value types)."""
    from models import ModelError, check_model_kwargs

    kwargs = dict(cfg.get("model_kwargs") or {})
    for k in ("T", "num_classes"):
        if k in kwargs:
            raise ConfigError(f"model_kwargs sets '{k}'; use the top-level config key '{k}' instead "
                              f"(e.g. --{k.replace('_', '-')} {kwargs[k]})")
    try:
        check_model_kwargs(cfg.model, kwargs)
    except ModelError as err:
        raise ConfigError(f"config key 'model_kwargs': {err}" if kwargs and "unknown model" not in str(err)
                          else f"config key 'model': {err}") from None
    _build_on_meta(cfg, kwargs)


def _build_on_meta(cfg, kwargs) -> None:
    """Build the model on the meta device (no memory, no weights): the constructor's own checks (a width that
    the heads do not divide, per-stage list lengths, ...) stop the run before anything is written."""
    import torch

    from models import ModelError, create_model

    num_classes = cfg.get("num_classes")
    if num_classes is None and "dataset" in cfg:
        from utils.data import dataset_info

        num_classes = dataset_info(cfg.dataset)["num_classes"]
    try:
        with torch.device("meta"):
            create_model(cfg.model, num_classes=num_classes, T=cfg.get("T"), **kwargs)
    except ModelError as err:
        raise ConfigError(f"config keys 'model'/'model_kwargs': {err}".replace("rejected kwargs",
                                                                              "rejected model_kwargs")) from None
    except Exception:  # anything else (a model that cannot live on the meta device) is reported by the real build
        pass


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def _check_bounds(key: str, value, opt: Option) -> None:
    if value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    if opt.length is not None and isinstance(value, (list, tuple)) and len(value) != opt.length:
        raise ConfigError(f"config key '{key}' needs {opt.length} values, got {len(value)}: {list(value)} "
                          f"(e.g. {_flag(key)} {' '.join(map(str, opt.default or [0.5] * opt.length))})")
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if opt.low is not None and opt.high is not None and not opt.low <= v <= opt.high:
            rng = f"between {opt.low:g} and {opt.high:g}"
        elif opt.low is not None and v < opt.low:
            rng = f">= {opt.low:g}"
        elif opt.high is not None and v > opt.high:
            rng = f"<= {opt.high:g}"
        elif isinstance(v, int) and opt.high is None and v > INT32_MAX:
            rng = f"<= {INT32_MAX} (the largest count it can hold)"
        else:
            continue
        null = " or null (the default)" if opt.default is None else ""
        raise ConfigError(f"config key '{key}' must be {rng}, got {v}; set {_flag(key)} (or '{key}:' in "
                          f"the config) to a value {rng.split(' (')[0]}{null}")


def _check_ranges(cfg: Config, options: Optional[Dict[str, Option]] = None) -> None:
    for k, opt in (options or {}).items():
        if k in cfg:
            _check_bounds(k, cfg[k], opt)


@dataclasses.dataclass(frozen=True)
class Relation:
    """A rule between config keys: checked when every key of ``keys`` is in the config.

    ``problem(cfg)`` returns None when the rule holds, else the message (the values and the fix).
    """

    keys: Sequence[str]
    problem: Any  # Callable[[Config], Optional[str]]


def _effective_lr(cfg) -> Optional[float]:
    """The peak lr the run will use (``blr`` scaled by the effective batch when set; WORLD_SIZE processes)."""
    if cfg.get("blr") is None:
        return cfg.get("lr")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return cfg.blr * cfg.batch_size * cfg.get("accum_steps", 1) * world / 256


def _lr_floor(cfg, key: str) -> Optional[str]:
    lr = _effective_lr(cfg)
    if lr is None or cfg[key] <= lr:
        return None
    what = (f"the lr {lr:g} (= blr {cfg.blr:g} x effective batch / 256)" if cfg.get("blr") is not None
            else f"lr {lr:g}")
    return (f"config key '{key}' ({cfg[key]:g}) is above {what}: the schedule would raise the lr where it should "
            f"lower it. Set {_flag(key)} to at most {lr:g} (or raise the lr).")


def _ordered_pair(cfg, key: str) -> Optional[str]:
    v = cfg[key]
    if v is None or len(v) != 2 or v[0] <= v[1]:
        return None
    return (f"config key '{key}' is a [min, max] range but its minimum is above its maximum: {list(v)}; "
            f"give {_flag(key)} {v[1]:g} {v[0]:g}")


def _cpu_count() -> int:
    return max(1, os.cpu_count() or 1)


def _machine_size(cfg, key: str, per_cpu: int, floor: int, what: str) -> Optional[str]:
    limit = max(floor, per_cpu * _cpu_count())
    if cfg[key] is None or cfg[key] <= limit:
        return None
    return (f"config key '{key}' is {cfg[key]} but this machine has {_cpu_count()} CPUs: {what}. "
            f"Set {_flag(key)} to at most {limit}" + (" (0 = automatic)." if key == "threads" else "."))


RELATIONS: List[Relation] = [
    Relation(("warmup_epochs", "epochs"), lambda c: None if c.warmup_epochs <= c.epochs else (
        f"warmup_epochs ({c.warmup_epochs}) is larger than epochs ({c.epochs}): epochs counts the whole schedule, "
        f"warm-up included. Lower --warmup-epochs (e.g. --warmup-epochs 0) or raise --epochs to at least "
        f"{c.warmup_epochs}." + (f" Note: the {c.cooldown_epochs} cooldown_epochs come on top of epochs."
                                 if c.get("cooldown_epochs") else ""))),
    Relation(("min_lr", "lr", "blr", "batch_size"), lambda c: _lr_floor(c, "min_lr")),
    Relation(("warmup_lr", "warmup_epochs", "lr", "blr", "batch_size"),
             lambda c: _lr_floor(c, "warmup_lr") if c.warmup_epochs else None),
    Relation(("opt_betas",), lambda c: None if c.opt_betas is None or max(c.opt_betas) < 1 else (
        f"config key 'opt_betas' must be below 1 (a beta of 1 never forgets and divides by zero), got "
        f"{list(c.opt_betas)}; e.g. --opt-betas 0.9 0.999")),
    Relation(("opt_eps",), lambda c: None if c.opt_eps is None or c.opt_eps > 0 else (
        f"config key 'opt_eps' must be > 0 (it keeps a division finite), got {c.opt_eps}; e.g. --opt-eps 1e-8")),
    Relation(("clip_grad",), lambda c: None if c.clip_grad is None or c.clip_grad > 0 else (
        f"config key 'clip_grad' must be > 0 (or null = no clipping), got {c.clip_grad}; e.g. --clip-grad 1.0")),
    Relation(("eval_metric", "model_ema"), lambda c: None if c.eval_metric != "ema_top1" or c.model_ema else (
        "config key 'eval_metric' is ema_top1 but model_ema is false: there is no EMA to select by. "
        "Pass --model-ema true, or --eval-metric top1")),
    Relation(("scale",), lambda c: _ordered_pair(c, "scale")),
    Relation(("ratio",), lambda c: _ordered_pair(c, "ratio")),
    Relation(("cutmix_minmax",), lambda c: _ordered_pair(c, "cutmix_minmax")),
    Relation(("threads",), lambda c: _machine_size(c, "threads", 1, 1, "more threads than CPUs only wait for "
                                                                       "each other")),
    Relation(("workers",), lambda c: _machine_size(c, "workers", 8, 32, "more loader processes than that only "
                                                                         "compete for the CPUs")),
]


def check_relations(cfg) -> None:
    """Apply :data:`RELATIONS` to ``cfg`` (rules whose keys are all present); the first broken one raises."""
    for rule in RELATIONS:
        if all(k in cfg for k in rule.keys):
            problem = rule.problem(cfg)
            if problem:
                raise ConfigError(problem)


def schedule_note(cfg) -> str:
    """One sentence on how the epoch count adds up (warm-up inside ``epochs``, cooldown on top), for banners."""
    epochs, warmup, cooldown = cfg.get("epochs"), cfg.get("warmup_epochs", 0), cfg.get("cooldown_epochs", 0)
    text = f"The run trains epochs + cooldown_epochs = {epochs + cooldown} epochs"
    text += f" ({warmup} of warm-up inside the {epochs}" if warmup else f" ({epochs} of schedule"
    text += f", then {cooldown} at min_lr on top)." if cooldown else ", no cooldown)."
    return text


def without_options(argv: Sequence[str], valued: Sequence[str] = (), flags: Sequence[str] = ()) -> List[str]:
    """``argv`` without the options ``valued`` (``--key value`` or ``--key=value``) and ``flags`` (no value)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            continue
        elif a in valued:
            skip = True
        elif a.split("=", 1)[0] not in valued:
            out.append(a)
    return out


def dump_yaml(data: Dict[str, Any]) -> str:
    """YAML text of a plain dict (tuples as lists), keys in insertion order."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return yaml.safe_dump(plain(data), sort_keys=False, default_flow_style=None)


def input_errors() -> tuple:
    """Exception types that mean bad input (config, dataset, checkpoint): one line on stderr, exit code 2."""
    return INPUT_ERRORS


def report_input_error(err: Exception) -> int:
    """Print ``error: <message>`` once (rank 0) and return the exit code 2."""
    from utils.training.distributed import is_main

    if is_main():
        print(f"error: {err}", file=sys.stderr)
    return 2
