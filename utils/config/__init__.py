"""Run configuration: YAML file -> defaults -> command-line overrides, with clear errors (docs/training.md).

``parse_config(argv)`` is ``python train.py -c CONFIG [--key value ...]``. Every key of :data:`TRAIN_OPTIONS` and of
``utils.data.DATA_OPTIONS`` is a YAML key and a flag, declared once; the result is a :class:`Config` holding every
key (read it as ``cfg.key``). Values are coerced to the key's type (``6e-2`` is a number) and checked against its
range and choices, the command's rules between keys (``check``) and the model's constructor, before anything is built
or written; a bad key, value or file raises :class:`ConfigError` naming the key, the value and the fix.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set

import yaml

from utils.config.cli import (FALSE_WORDS, INT32_MAX, NONE_WORDS, TRUE_WORDS, BoolFlag, Parser,  # noqa: F401
                              report_input_error, without_options)
from utils.io.paths import readable_file_problem
from utils.options import ConfigError, Option

__all__ = ["ConfigError", "Option", "Config", "TRAIN_OPTIONS", "parse_config", "load_yaml", "all_options",
           "build_arg_parser", "check_model", "dump_yaml", "flag_name"]

AMP = ("none", "bf16", "fp16")
_o = Option
# Keys owned by the training engine (the data keys are utils.data.DATA_OPTIONS).
TRAIN_OPTIONS: Dict[str, Option] = {
    # run / output
    "experiment": _o("", str, "run name; outputs go to <output>/<experiment> (default: config file name)"),
    "output": _o("output", str, "root folder of run folders", flags=("-o",)),
    "resume": _o("", str, "checkpoint to resume from, or 'auto' (= <output>/<experiment>/last.pth.tar if present)"),
    "overwrite": _o(False, bool, "start afresh in a run folder that already holds a run, deleting its outputs"),
    "initial_checkpoint": _o("", str, "weights to start from (model only, e.g. the authors' files)"),
    "checkpoint_hist": _o(0, int, "also keep the N best epochs (eval_metric) as checkpoint-<epoch>.pth.tar", low=0),
    "pretrained": _o(False, bool, "start from the released weights of --model NAME.TAG (downloaded once); a new "
                     "classifier if num_classes differs"),
    "seed": _o(42, int, "global seed (per-rank and per-epoch seeds derive from it)", low=-2 ** 63, high=2 ** 63 - 1),
    "deterministic": _o(None, bool, "true = deterministic algorithms, fp32 without TF32 (bit-exact resume); false = "
                        "fastest (cuDNN autotuning, TF32); null (default) = true on CPU, false on CUDA"),
    "device": _o("auto", str, "auto | cpu | cuda | cuda:N"),
    "threads": _o(0, int, "CPU threads per process; 0 = automatic: the cores other processes leave free, "
                  "re-measured during the run (OMP_NUM_THREADS, when set, is kept)", low=0),
    # model
    "model": _o("maxformer_cifar", str, "registered model name (timm.create_model)"),
    "neuron": _o(None, str, "spiking neuron: lif | if | plif | a spikingjelly multi-step neuron class by name (e.g. "
                 "CUBALIFNode); short for model_kwargs {neuron: ...}, its settings go there (null = the model's: lif)"),
    "model_kwargs": _o({}, dict, "extra constructor kwargs, e.g. {embed_dims: 64, neuron: if}; CLI: k=v ... adds to "
                        "the YAML's; start with 'none' to replace them"),
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
    "batch_size": _o(64, int, "batch size per process", flags=("-b",), low=1),
    "val_batch_size": _o(None, int, "eval batch size per process (default: batch_size)", low=1,
                         flags=("-vb", "--validation-batch-size")),
    "accum_steps": _o(1, int, "gradient accumulation steps", flags=("--grad-accum-steps",), low=1),
    "clip_grad": _o(None, float, "gradient clipping threshold (off when null)", low=0),
    "clip_mode": _o("norm", str, "norm | value | agc", choices=("norm", "value", "agc")),
    "reference_batch": _o(None, int, "effective batch of the published recipe (a warning if yours differs)", low=1),
    # engine switches
    "amp": _o("none", str, "mixed precision: none | bf16 | fp16 (fp16 needs CUDA); a bare --amp means bf16",
               choices=AMP, flags=("--amp-dtype",)),
    "eval_amp": _o("same", str, "precision of the evaluation: same (as amp) | none (float32) | bf16 | fp16",
                    choices=("same",) + AMP),
    "channels_last": _o(False, bool, "channels-last memory format for 4-D inputs"),
    "fastpath": _o(True, bool, "the fast training path of benchmark.py: compiled PyTorch neurons (under amp also "
                   "whole-model compile, channels-last); false = plain eager spikingjelly path"),
    "compile": _o(False, bool, "with fastpath: torch.compile the whole model (faster; backward not bitwise-faithful: "
                  "near-threshold spikes may flip)", flags=("--torchcompile",)),
    "neuron_impl": _o("auto", str, "neuron kernels (auto: torch with fastpath, else spikingjelly; triton on a CPU "
                      "needs TRITON_INTERPRET=1)", choices=("auto", "spikingjelly", "torch", "triton")),
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


_SPELLINGS = {"bfloat16": "bf16", "float16": "fp16", "float32": "none"}  # timm's / PyTorch's values of amp
_TIMM_KWARGS = {"--in-chans": "in_chans", "--gp": "global_pool", "--drop-path": "drop_path_rate"}  # timm: to the model
_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
_TRUE, _FALSE = TRUE_WORDS + ("y", "t"), FALSE_WORDS + ("n", "f")  # a YAML value may also be y/n, t/f


def all_options(extra: Optional[Dict[str, Option]] = None) -> Dict[str, Option]:
    """Every valid key: the data keys, the training keys and the caller's ``extra`` keys."""
    from utils.data import DATA_OPTIONS  # lazy here and below: utils.config.cli (hub_export -h) runs without torch

    return {**DATA_OPTIONS, **TRAIN_OPTIONS, **(extra or {})}


class Config(argparse.Namespace):
    """A resolved configuration: every key, read as ``cfg.key`` (``vars(cfg)`` is the plain dict)."""


# ---------------------------------------------------------------------------------------------- values
def _number(value):
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value.strip())
            except ValueError:
                pass
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _scalar(value, kind, where: str):
    """``value`` (from YAML, or a command-line string) as ``kind``, or a ConfigError."""
    number, word = _number(value), value.strip().lower() if isinstance(value, str) else None
    if kind is bool and (isinstance(value, bool) or word in _TRUE + _FALSE or number in (0, 1)):
        return word in _TRUE if word is not None else bool(value)
    if kind is int and number is not None and (isinstance(number, int) or number.is_integer()):
        return int(number)
    if kind is float and number is not None:
        if not abs(number) < math.inf:
            raise ConfigError(f"{where}: expected a finite number, got {value!r} (nan and inf are no setting)")
        return float(number)
    if kind is str and (word is not None or number is not None):
        return str(value)
    raise ConfigError(f"{where}: expected {_NAMES[kind]}, got {value!r}")


def _yaml_value(text: str):
    """A command-line value as YAML reads it, with ``6e-2`` (a string to PyYAML) a number."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number(value) if isinstance(value, str) and isinstance(_number(value), float) else value


def coerce(key: str, value, opt: Option, from_cli: bool = False):
    """``value`` (from YAML; argparse's strings with ``from_cli``) as ``opt``'s type, in its range and choices."""
    where = f"config key '{key}'"
    if from_cli and opt.default is None and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        value = None  # '--aa none' switches off an option that is off by default
    if value is None and (opt.default is None or opt.kind is str):
        return None if opt.default is None else ""
    if opt.kind is dict and from_cli:  # k=v pairs; 'none' drops the mapping given so far (the YAML's too)
        out = {}
        for item in value:
            k, eq, v = item.partition("=")
            if not eq and item.strip().lower() not in (*NONE_WORDS, "{}"):
                raise ConfigError(f"{where}: expected key=value pairs, got {item!r}")
            out.update({k.strip().replace("-", "_"): _yaml_value(v)} if eq else {"__reset__": True})
        return out
    if opt.kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if opt.kind is list:
        items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
        out = [_scalar(v, type(opt.default[0]) if opt.default else float, f"{where}[{i}]") for i, v in enumerate(items)]
    else:
        spelled = _SPELLINGS.get(value) if isinstance(value, str) else None  # e.g. --amp-dtype bfloat16
        out = _scalar(spelled if spelled in (opt.choices or ()) else value, opt.kind, where)
        if opt.choices is not None and out not in opt.choices:
            raise ConfigError(f"{where}: {out!r} is not one of {', '.join(map(str, opt.choices))}")
    _check_bounds(key, out, opt)
    return out


def flag_name(key: str) -> str:
    """The command-line flag of config key ``key`` (``--warmup-epochs``)."""
    return f"--{key.replace('_', '-')}"


def _check_bounds(key: str, value, opt: Option) -> None:
    if opt.length is not None and len(value) != opt.length:
        raise ConfigError(f"config key '{key}' needs {opt.length} values, got {len(value)}: {value} "
                          f"(e.g. {flag_name(key)} {' '.join(map(str, opt.default or [0.5] * opt.length))})")
    for v in value if isinstance(value, list) else [value]:
        low, high = opt.low, opt.high if opt.high is not None or not isinstance(v, int) else INT32_MAX
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (low is None or low <= v) and v <= (high or v):
            continue
        rng = (f"between {low:g} and {high:g}" if low is not None and opt.high is not None else f">= {low:g}"
               if low is not None and v < low else f"<= {high} (the largest count it can hold)" if opt.high is None
               else f"<= {high:g}")
        null = " or null (the default)" if opt.default is None else ""
        raise ConfigError(f"config key '{key}' must be {rng}, got {v}; set {flag_name(key)} (or '{key}:' in the "
                          f"config) to a value {rng.split(' (')[0]}{null}")


def _unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run with --help to list the valid keys."
    return ConfigError(f"unknown config key '{key}' ({where}).{hint}")


# ---------------------------------------------------------------------------------------------- YAML files
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (``a-b`` and ``a_b`` are one key)."""

    def construct_mapping(self, node, deep=False):
        lines: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            norm = key.replace("-", "_") if isinstance(key, str) else key
            try:
                first = lines.get(norm)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if first is not None:
                raise ConfigError(f"key '{key}' is given twice (line {first} and line "
                                  f"{key_node.start_mark.line + 1}); keep one of them")
            lines[norm] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _file_problem(path: str, what: str) -> Optional[str]:
    inside = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))[:3] \
        if os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK) else []
    return f"{what} {path} is a folder; give a YAML file (in it: {', '.join(inside)})" if inside \
        else readable_file_problem(path, what)


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if b"\0" in raw:
        raise ConfigError(f"{path} is not a YAML config (binary content). -c takes a YAML file such as "
                          f"cifar10-100/cifar10.yaml; a checkpoint goes to --resume / --initial-checkpoint "
                          f"(validate.py: --checkpoint)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} (line {line}); "
                          f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW.yaml)") from None


def load_yaml(path: str, _seen: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML config: keys with underscores, a relative ``data_path`` relative to the file's folder.

    ``base: FILE`` (or a list of files, merged in order) is read first; the child's keys win, a child's non-empty
    mapping is merged into the inherited one (an empty one replaces it), ``key: null`` restores the default.
    """
    path = os.path.abspath(os.path.expanduser(path))
    problem = _file_problem(path, "config file")
    if problem:
        raise ConfigError(problem)
    try:
        data = yaml.load(_read_text(path), Loader=_StrictLoader)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith(path) else f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config needs at least one key (e.g. 'model: maxformer_cifar'); "
                          f"to run with every default, leave out -c")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if isinstance(data.get("data_path"), str) and data["data_path"]:
        data["data_path"] = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(data["data_path"])))
    bases, merged = data.pop("base", None) or [], {}
    for base in bases if isinstance(bases, list) else [bases]:
        base_path = os.path.abspath(os.path.join(os.path.dirname(path), base)) if isinstance(base, str) else None
        problem = ("give a file path, or a list of paths (base: [a.yaml, b.yaml])" if base_path is None else
                   f"the 'base' chain loops back to {base_path}" if base_path in (*_seen, path)
                   else _file_problem(base_path, "base config"))
        if problem:
            raise ConfigError(f"{path}: 'base: {base if base_path else bases}': {problem}")
        merged = _merge(merged, load_yaml(base_path, (*_seen, path)))
    return _merge(merged, data)


def _merge(parent: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    return {**parent, **{k: {**parent[k], **v} if v and isinstance(v, dict) and isinstance(parent.get(k), dict)
                         else v for k, v in child.items()}}


# ---------------------------------------------------------------------------------------------- the command line
class _Parser(Parser):
    def error(self, message):  # never print usage + exit from deep inside; let the caller report
        raise ConfigError(message)


def _timm_argv(args: List[str]) -> List[str]:
    """timm's spellings as ours: ``--key_name`` is ``--key-name``, ``--torchcompile inductor`` the switch,
    ``--in-chans``/``--gp``/``--drop-path`` set model kwargs, ``--input-size C H W`` is in_chans and img_size."""
    out, kwargs, i = [], [], 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        flag, i = flag.replace("_", "-") if flag.startswith("--") else flag, i + 1
        if flag == "--lr-base":
            raise ConfigError("--lr-base: timm scales it by the square root of batch / 256 for Adam-type optimizers; "
                              "here the base lr is --blr, scaled linearly (lr = blr x effective batch / 256)")
        if flag in _TIMM_KWARGS:
            value, i = (value, i) if eq else (args[i] if i < len(args) else "", i + 1)
            kwargs.append(f"{_TIMM_KWARGS[flag]}={value}")
        elif flag == "--input-size":
            size, i = args[i:i + 3], i + 3
            if len(size) < 3 or size[1] != size[2]:
                raise ConfigError(f"--input-size takes C H W with H = W (the inputs are square), got "
                                  f"{' '.join(size)}; or give --in-chans C --img-size N")
            kwargs, out = kwargs + [f"in_chans={size[0]}"], out + ["--img-size", size[1]]
        elif flag == "--torchcompile" and (value == "inductor" or not eq and args[i:i + 1] == ["inductor"]):
            out, i = out + [flag], i + (not eq)
        else:
            out.append(flag + eq + value)
    return out + (["--model-kwargs", *kwargs] if kwargs else [])


def build_arg_parser(options: Dict[str, Option], description: str = "",
                     shown: Optional[Iterable[str]] = None) -> argparse.ArgumentParser:
    """An argparse parser with a flag per key (its :attr:`Option.flags` too; a switch is a :class:`BoolFlag`).
    With ``shown``, ``-h`` lists only those keys; the others are still accepted."""
    p = _Parser(description=description, allow_abbrev=False, legacy=_timm_argv)
    p.add_argument("-c", "--config", default="", help="YAML config file")
    for key, opt in sorted(options.items()):
        text = opt.help if "default" in opt.help else f"{opt.help} (default: {json.dumps(opt.default)})"
        kw: Dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS, help=text.replace("%", "%%")
                                  if shown is None or key in shown else argparse.SUPPRESS)
        if opt.kind is bool:
            kw.update(action=BoolFlag, allow_none=opt.default is None)
        elif opt.kind is dict:  # repeated --model-kwargs add up
            kw.update(nargs="+", metavar="K=V", action="extend")
        elif opt.kind is list:
            kw.update(nargs="+", metavar="V")
        elif opt.choices:
            kw.update(metavar="{" + ",".join(opt.choices) + "}")
        if key == "amp":  # timm's bare --amp: mixed precision on
            kw.update(nargs="?", const="bf16")
        shorts = [f for f in opt.flags if not f.startswith("--")]
        p.add_argument(*dict.fromkeys([*shorts, flag_name(key), *opt.flags]), **kw)
    return p


def parse_config(argv: Optional[Sequence[str]] = None, extra: Optional[Dict[str, Option]] = None,
                 description: str = "", shown: Optional[Iterable[str]] = None,
                 check: Optional[Callable[[Config, Set[str]], None]] = None) -> Config:
    """Resolve ``-c CONFIG`` plus command-line overrides into a checked :class:`Config` (else a ConfigError).
    ``extra``: the command's own keys; ``shown``: the keys ``-h`` lists (default: all); ``check(cfg, keys given
    on the command line)``: the command's rules between keys (a training run's: ``utils.training.preflight``)."""
    from utils.data import check_data_config

    options = all_options(extra)
    args, unknown = build_arg_parser(options, description, shown).parse_known_args(argv)
    for token in unknown:
        if not token.startswith("-"):
            raise ConfigError(f"unexpected argument {token!r} (values follow a --key)")
        raise _unknown_key_error(token.lstrip("-").split("=", 1)[0].replace("-", "_"), options, "command line")
    path, values = vars(args).pop("config"), {k: copy.deepcopy(o.default) for k, o in options.items()}
    for k, v in (load_yaml(path) if path else {}).items():
        if k not in options:
            raise _unknown_key_error(k, options, f"in {path}")
        values[k] = values[k] if v is None else coerce(k, v, options[k])  # null: the key's default
    for k, v in vars(args).items():
        new = coerce(k, v, options[k], from_cli=True)
        if options[k].kind is dict and not new.pop("__reset__", False):
            new = {**values[k], **new}  # --model-kwargs adds to / overrides the YAML mapping
        values[k] = os.path.abspath(os.path.expanduser(new)) if k == "data_path" and new else new
    cfg = Config(**values, config=os.path.abspath(path) if path else "")
    cfg.experiment = cfg.experiment or (os.path.splitext(os.path.basename(path))[0] if path else "run")
    if cfg.neuron is not None:  # short for model_kwargs: {neuron: ...}
        if cfg.model_kwargs.get("neuron", cfg.neuron) != cfg.neuron:
            raise ConfigError(f"config keys 'neuron' ({cfg.neuron}) and 'model_kwargs' (neuron: "
                              f"{cfg.model_kwargs['neuron']}) disagree; set the neuron once")
        cfg.model_kwargs = {**cfg.model_kwargs, "neuron": cfg.neuron}
    if check is not None:
        check(cfg, set(vars(args)))
    check_data_config(cfg)
    check_model(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------- the model
def check_model(cfg) -> None:
    """``cfg.model`` is registered and ``cfg.model_kwargs`` fit its constructor (names and value types); the
    model is then built on the meta device (no memory, no weights), so the constructor's own checks (a width
    that the heads do not divide, per-stage list lengths, ...) stop the run before anything is written."""
    from models import TOP_LEVEL_KWARGS, ModelError, build_model, check_model_kwargs

    kwargs = dict(cfg.model_kwargs or {})
    try:
        check_model_kwargs(cfg.model, kwargs, top_level=TOP_LEVEL_KWARGS)
    except ModelError as err:
        msg = str(err)
        if "top-level" not in msg:  # the top-level refusal names its key itself
            key = ("model" if not kwargs or "unknown model" in msg else
                   "neuron" if cfg.neuron and "unknown neuron" in msg else "model_kwargs")
            msg = f"config key '{key}': {msg}"
        raise ConfigError(msg) from None
    from utils.data import dataset_info

    num_classes = cfg.num_classes or dataset_info(cfg.dataset)["num_classes"]
    try:
        build_model(cfg.model, T=cfg.T, num_classes=num_classes, model_kwargs=kwargs, meta=True)
    except ModelError as err:
        raise ConfigError(f"config keys 'model'/'model_kwargs': {err}".replace("rejected kwargs",
                                                                              "rejected model_kwargs")) from None
    except Exception:  # anything else (a model that cannot live on the meta device) is reported by the real build
        pass


def dump_yaml(data: Dict[str, Any]) -> str:
    """YAML text of a plain dict (tuples as lists), keys in insertion order."""
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, default_flow_style=None)

