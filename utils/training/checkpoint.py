"""Checkpoint I/O: loading weights (ours or the authors' released files) by name.

* :func:`read_checkpoint` — ``torch.load`` with ``weights_only`` safety and errors that say what is wrong
  with the file: not found, empty / truncated / not a checkpoint, or holding objects that are unsafe to unpickle;
* :func:`load_checkpoint` — weights into a model, strictly by name; older layouts (the authors' released
  ImageNet files, this repository's earlier names) are converted first, see :func:`convert_state_dict`;
* ``python -m utils.training.checkpoint convert IN OUT [--model NAME]`` — a copy of a file with the current names.

Training-state saving and resuming live further down in this module.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from models import ModelError, build_model, list_our_models, parse_model_kwargs
from models.legacy_names import STATE_DICT_KEYS as _STATE_DICT_KEYS
from models.legacy_names import convert_state_dict, top_module
from models.legacy_names import strip_wrapper_prefixes as _strip_prefixes
from models.weights import WeightsError, read_weights, stored_model_kwargs
from utils.config.cli import Parser, writable_file
from utils.errors import CheckpointError, ConfigError
from utils.io.atomic import atomic_write
from utils.io.outputs import check_outputs, record_outputs

__all__ = ["CheckpointError", "read_checkpoint", "extract_state_dict", "convert_state_dict", "load_checkpoint",
           "load_model"]

def read_checkpoint(path: Union[str, os.PathLike], trust_pickle: bool = False,
                    trust_flag: Optional[str] = None, resume: bool = False) -> Any:
    """:func:`models.weights.read_weights` (safe ``torch.load`` on CPU; a file that cannot be read is named with
    what is wrong with it), its errors as :class:`CheckpointError`."""
    try:
        return read_weights(path, trust_pickle=trust_pickle, trust_flag=trust_flag, resume=resume)
    except WeightsError as err:
        raise CheckpointError(str(err)) from None


def extract_state_dict(obj: Any, key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: raw, or under ``state_dict`` / ``model`` (or ``key``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    keys = (key,) if key else _STATE_DICT_KEYS
    for k in keys:
        if isinstance(obj.get(k), Mapping):
            obj = obj[k]
            break
    else:
        if key:
            hint = " (was it trained without model_ema? then leave out --use-ema)" if key == "state_dict_ema" else ""
            raise CheckpointError(f"checkpoint has no entry {key!r}{hint}; it has {sorted(map(str, obj))[:10]}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(obj)[:10]})")
    return sd


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    key: Optional[str] = None,
    trust_pickle: bool = False,
    trust_flag: Optional[str] = None,
    log: Optional[Callable[[str], None]] = print,
    source: Optional[str] = None,
) -> Dict[str, list]:
    """Load weights into ``model`` by parameter name.

    Accepts a path to a ``.pth``/``.pth.tar`` (ours or the authors'), a raw state_dict or a
    dict holding it under ``state_dict`` / ``model``. DDP/compile prefixes are removed and the
    model's own ``filter_reference_state_dict`` (e.g. Spikformer's never-used LayerNorms) is
    applied. Older names are converted (:func:`convert_state_dict`); ``log`` (``print`` by
    default, ``None`` for silence) gets one line per renamed module. With ``strict`` any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` listing them; otherwise matching
    tensors are loaded and the report ``{'missing', 'unexpected', 'mismatched'}`` is returned.
    ``trust_pickle`` / ``trust_flag``: see :func:`read_checkpoint`. ``source``: the file a mapping was read
    from, named in the messages.
    """
    obj = path_or_state_dict
    source = f"checkpoint {source!r}" if source else "checkpoint"
    if not isinstance(obj, Mapping):
        source = f"checkpoint {os.fspath(obj)!r}"
        obj = read_checkpoint(obj, trust_pickle=trust_pickle, trust_flag=trust_flag)
    try:
        sd = _strip_prefixes(extract_state_dict(obj, key))
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    target = getattr(model, "module", model)  # accept a DDP-wrapped model
    hook = getattr(target, "filter_reference_state_dict", None)
    if callable(hook):
        sd = hook(sd)
    sd, renames, refusals = convert_state_dict(target, sd)
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    if strict and (missing or unexpected or mismatched):
        name = type(target).__name__
        lines = [f"{source} does not fit {name} ({len(own)} tensors in the model, {len(sd)} in the file):"]
        lines += refusals.values()
        for label, items in report.items():
            items = [k for k in items if top_module(k.split(":")[0]) not in refusals]  # listed above
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                lines.append(f"  {label} ({len(items)}):\n    {shown}")
        lines.append("Check that the model and its settings (model name, num_classes, embed_dims and other "
                     "model_kwargs) are those the checkpoint was trained with.")
        lines += _recorded_settings(obj, target)
        raise CheckpointError("\n".join(lines))
    if renames and log is not None:
        log(f"{source}: older parameter names converted ({len(renames)} modules):")
        for old, new, how in renames:
            log(f"  {old} -> {new}  ({how})")
    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in sd.items() if k in own and k not in bad}
    target.load_state_dict(loadable, strict=False)
    return report


def _recorded_settings(obj: Any, model: nn.Module) -> List[str]:
    """The line naming the settings a checkpoint of train.py records, for a file that does not fit ``model``."""
    config = obj.get("config") if isinstance(obj, Mapping) else None
    name = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(name, str):
        return []
    kwargs = stored_model_kwargs(obj, name)
    text = {k: "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v) for k, v in kwargs.items()}
    top = ("T", "num_classes")
    flags = [f"--model {name}"] + [f"--{k.replace('_', '-')} {text[k]}" for k in top if k in text]
    if set(text) - set(top):
        flags.append("--model-kwargs " + " ".join(f"{k}={v}" for k, v in text.items() if k not in top))
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    return [f"The file records what it was trained with ({name}: {kwargs}); this model is {arch}. On the command "
            f"line: {' '.join(flags)} (or -c the run's args.yaml)."]


# ----------------------------------------------------------------------------------------------
# Training state: atomic saving, RNG capture and resume (training engine).
__all__ += ["save_checkpoint", "copy_checkpoint", "checkpoint_position", "capture_rng_state", "restore_rng_state",
            "read_training_state", "auto_resume_path"]


def save_checkpoint(state: Mapping[str, Any], path: Union[str, os.PathLike]) -> str:
    """Write ``state`` with ``torch.save`` atomically (:func:`utils.io.atomic.atomic_write`).

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a torn one; a
    full or read-only disk raises :class:`utils.io.atomic.FileWriteError` and leaves the previous one.
    """
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def copy_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> str:
    """Atomically copy a checkpoint file (used for ``best.pth.tar``)."""
    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)

    return atomic_write(dst, copy)


def checkpoint_position(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """``epoch``, ``partial_epoch``, ``best_metric`` and ``best_epoch`` of a training checkpoint, or None when
    it is absent or unreadable. Memory-maps the file: cheap even for a large checkpoint."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(obj, Mapping) or "epoch" not in obj:
        return None
    return {"epoch": int(obj["epoch"]), "partial_epoch": obj.get("partial_epoch"),
            "best_metric": obj.get("best_metric"), "best_epoch": int(obj.get("best_epoch", -1))}


def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python, numpy and torch (CPU + CUDA) in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def load_model(name: str, checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """:func:`models.build_model` ``(name, **kwargs)`` (:class:`~models.ModelError` on a bad name or kwargs; the
    kwargs a checkpoint of train.py records under the given ones), then the weights of ``checkpoint`` if given
    (:class:`CheckpointError` if they do not load)."""
    if checkpoint:
        given = {k: v for k, v in kwargs.items() if v is not None}
        kwargs = {**stored_model_kwargs(read_checkpoint(checkpoint), name), **given}
    model = build_model(name, **kwargs)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def read_training_state(path: Union[str, os.PathLike], trust_flag: Optional[str] = None) -> Dict[str, Any]:
    """Load a checkpoint written by ``train.py`` for resuming; clear error for weights-only files."""
    obj = read_checkpoint(path, trust_flag=trust_flag, resume=True)
    needed = ("state_dict", "optimizer", "epoch")
    if not isinstance(obj, Mapping) or any(k not in obj for k in needed):
        have = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a training checkpoint of this repo (needs {needed}, has {have}). "
            "To start from its weights only, use --initial-checkpoint instead of --resume."
        )
    return dict(obj)


def auto_resume_path(run_dir: Union[str, os.PathLike]) -> Optional[str]:
    """``<run_dir>/last.pth.tar`` if it exists, else None (``--resume auto``)."""
    p = os.path.join(os.fspath(run_dir), "last.pth.tar")
    return p if os.path.isfile(p) else None


# ----------------------------------------------------------------------------------------------
# python -m utils.training.checkpoint convert IN OUT
def _model_name_in(obj: Any) -> Optional[str]:
    """The model name a checkpoint records: ``arch`` (timm savers) or ``args.model`` (the authors' files)."""
    if not isinstance(obj, Mapping):
        return None
    name = obj.get("arch") or getattr(obj.get("args"), "model", None)
    return name if isinstance(name, str) else None


def convert_file(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], model_name: Optional[str] = None,
                 model_kwargs: Optional[Mapping[str, Any]] = None, trust_pickle: bool = False,
                 log: Callable[[str], None] = print) -> str:
    """Write ``dst``: the weights of ``src`` (and its EMA weights) under the current names of ``model_name``.

    The model comes from ``model_name`` or, if omitted, the name the file records (``arch`` or
    ``args.model``), built with the kwargs a checkpoint of train.py records (``model_kwargs`` on top).
    Plain entries (``epoch``, ``arch``, ``args``, ``metric``...) are kept, optimizer
    and scaler state are dropped; the result loads with ``weights_only`` safety.
    """
    flag = "--trust-checkpoint"
    obj = read_checkpoint(src, trust_pickle=trust_pickle, trust_flag=flag)
    name = model_name or _model_name_in(obj)
    if name is None:
        raise CheckpointError(f"{os.fspath(src)!r} does not record its model; pass --model NAME "
                              f"(one of: {', '.join(list_our_models())})")
    kwargs = {**stored_model_kwargs(obj, name), **dict(model_kwargs or {})}  # a file of ours records its kwargs
    try:
        model = build_model(name, meta=True, **kwargs)  # names and shapes only
    except ModelError as err:
        raise CheckpointError(f"cannot build the model to convert {os.fspath(src)!r} to: {err}") from None
    entries = [k for k in _STATE_DICT_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    out: Dict[str, Any] = {}
    if entries:
        plain = (bool, int, float, str, type(None)) + (() if trust_pickle else (argparse.Namespace,))
        out = {k: v for k, v in obj.items() if isinstance(v, plain)}  # a trusted Namespace may hold anything
        for k in entries:
            log(f"{k}:")
            out[k] = _converted(model, obj, k, src, log)
    else:
        out = _converted(model, obj, None, src, log)
    save_checkpoint(out, dst)
    log(f"wrote {os.fspath(dst)} ({name})")
    return os.fspath(dst)


def _converted(model: nn.Module, obj: Any, key: Optional[str], src, log) -> Dict[str, torch.Tensor]:
    """One state dict of ``obj`` renamed for ``model`` (checked to fit strictly, on the meta device)."""
    try:
        sd = _strip_prefixes(extract_state_dict(obj, key))
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {os.fspath(src)!r}: {err}") from None
    hook = getattr(model, "filter_reference_state_dict", None)
    if callable(hook):
        sd = hook(sd)
    renamed, renames, _ = convert_state_dict(model, sd)
    on_meta = {k: v.to("meta") for k, v in renamed.items()}
    try:
        load_checkpoint(model, on_meta, log=None)  # raises the full listing if it does not fit
    except CheckpointError as err:
        raise CheckpointError(f"{os.fspath(src)!r}: {err}") from None
    if not renames:
        log("  names already current")
    for old, new, how in renames:
        log(f"  {old} -> {new}  ({how})")
    return renamed


def build_parser() -> argparse.ArgumentParser:
    """``python -m utils.training.checkpoint convert IN OUT``."""
    parser = Parser(prog="python -m utils.training.checkpoint", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write a copy of a checkpoint with this repository's parameter names")
    conv.add_argument("src", metavar="IN", help="checkpoint to read (e.g. the authors' 10-768-T4.pth.tar)")
    conv.add_argument("dst", metavar="OUT", type=writable_file, help="file to write")
    conv.add_argument("--model", default=None, help="registered model name (default: the one the file records)")
    conv.add_argument("--model-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                      help="model settings, e.g. num_classes=100 embed_dims=384")
    conv.add_bool("--trust-checkpoint",
                  help="allow arbitrary pickled objects in IN (only for files you trust); OUT holds none")
    conv.add_bool("--overwrite", help="replace an existing OUT this command did not write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        check_outputs({"OUT": args.dst}, args.overwrite, inputs=(args.src,))
        convert_file(args.src, args.dst, args.model, parse_model_kwargs(args.model_kwargs),
                     trust_pickle=args.trust_checkpoint)
        record_outputs(args.dst)
    except (CheckpointError, ModelError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
