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
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from models.legacy_names import STATE_DICT_KEYS as _STATE_DICT_KEYS
from models.legacy_names import convert_state_dict, top_module
from models.legacy_names import strip_wrapper_prefixes as _strip_prefixes
from utils.errors import CheckpointError

__all__ = ["CheckpointError", "read_checkpoint", "extract_state_dict", "convert_state_dict", "load_checkpoint"]

_CONVERT_COMMAND = "python -m utils.training.checkpoint convert"


# ------------------------------------------------------------------ reading files
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# Modules whose callables torch's weights_only unpickler never admits: a file naming them holds code to run.
_CODE_MODULES = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket",
                 "importlib", "runpy", "pty", "code", "ctypes", "marshal", "pickle", "webbrowser", "commands")


def _pickle_scan(data: bytes) -> Tuple[List[str], Optional[str]]:
    """Globals a pickle stream names and why it cannot be read to its end (None: it can), without running it."""
    import pickletools

    found: List[str] = []
    strings: List[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                break
        else:
            return found, "its data ends before its end marker"
    except ValueError as err:
        text = str(err)
        return found, ("its data ends before its end marker" if "exhausted" in text or "STOP" in text
                       else f"its data is damaged ({text})")
    return found, None


def _unsafe_globals(path: str, err: BaseException) -> List[str]:
    """What safe loading refused in ``path``: the globals outside torch's allowlist (and ``argparse.Namespace``)."""
    names: List[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (a raw or legacy pickle), or damaged
        text = str(err)
        if "Weights only load failed" in text or "weights_only" in text:
            names = re.findall(r"GLOBAL ([\w.]+)", text) + re.findall(r"got <class '([\w.]+)'>", text)
            if os.path.getsize(path) <= 1 << 26:  # the pickle's own globals (read, never run)
                with open(path, "rb") as f:
                    scanned, _ = _pickle_scan(f.read())
                names += [n for n in scanned if not n.startswith(("torch.", "collections.OrderedDict"))]
    return sorted({n for n in names if n != "argparse.Namespace"})


def _damage(path: str, size: int, err: BaseException) -> Tuple[str, str]:
    """``(kind, detail)`` of a file ``torch.load`` cannot read: kind is truncated | damaged | not a checkpoint."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(min(size, 1 << 16))
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except zipfile.BadZipFile:
            return "truncated", "its zip archive ends before its index (central directory)"
        except (OSError, EOFError, zipfile.LargeZipFile) as e:
            return "truncated", f"its zip archive cannot be read to its end ({e})"
        if not any(n.endswith("data.pkl") for n in names):
            return "not a checkpoint", "a zip archive without the data.pkl of torch.save"
        if bad:
            return "damaged", f"its entry {bad} fails its checksum"
    elif head[:1] == bytes([_PICKLE_PROTO]) and size <= 1 << 26:
        with open(path, "rb") as f:
            _, why = _pickle_scan(f.read())
        if why and "ends before" in why:
            return "truncated", why
        if why:
            return "damaged", why
    elif not head.startswith(_ZIP_MAGIC) and head[:1] != bytes([_PICKLE_PROTO]):
        try:
            text = head[:200].decode("utf-8")
        except UnicodeDecodeError:
            return "not a checkpoint", f"unknown format, it starts with the bytes {head[:8]!r}"
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return "not a checkpoint", f"it is a text file (first line: {first!r})"
    text = str(err).lower()
    if isinstance(err, EOFError) or any(t in text for t in ("ran out of input", "unexpected eof", "truncated",
                                                            "end of file", "unpack requires a buffer")):
        return "truncated", "its data ends early"
    return "damaged", f"torch.load cannot parse it: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def read_checkpoint(path: Union[str, os.PathLike], trust_pickle: bool = False,
                    trust_flag: Optional[str] = None, resume: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only`` safety; every failure is a :class:`CheckpointError` with the path.

    The authors' ``.pth.tar`` files also pickle an ``argparse.Namespace``; that one class is
    allow-listed. Files holding other objects need ``trust_pickle=True`` (only for files you trust).
    ``trust_flag`` names the command-line flag that sets ``trust_pickle`` for the caller (e.g.
    ``"--trust-checkpoint"``); without one the advice points to ``convert --trust-checkpoint`` (and, with
    ``resume``, to starting from the converted weights: a weights-only copy cannot be resumed).
    A refusal is told apart from damage by reading the file's pickle, never by running it: pickled code
    (``os.system`` and the like) is named as such, with no advice to trust it; a truncated file says truncated.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder; pass the checkpoint file inside it")
    if not os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        near = sorted(f for f in os.listdir(folder) if ".pth" in f or f.endswith(".pt"))[:5] \
            if os.path.isdir(folder) and os.access(folder, os.R_OK) else []
        hint = f" Checkpoints in that folder: {', '.join(near)}." if near else ""
        raise CheckpointError(f"checkpoint not found: {path!r}.{hint}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path!r} is not readable (permission denied); fix its permissions")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): it was not written completely "
                              "(an interrupted download or copy?). Fetch or copy it again.")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {err.strerror or err}") from None
    except Exception as err:  # torch raises many types for damaged or refused files; each is classified below
        unsafe = [] if trust_pickle else _unsafe_globals(path, err)
        if unsafe:
            raise CheckpointError(_refusal(path, unsafe, trust_flag, resume)) from None
        kind, detail = _damage(path, size, err)
        if kind == "not a checkpoint":
            raise CheckpointError(f"{path!r} ({size} bytes) is not a PyTorch checkpoint: {detail}. Check the path "
                                  f"(a checkpoint is a file written by torch.save, e.g. last.pth.tar).") from None
        raise CheckpointError(f"checkpoint {path!r} ({size} bytes) is {kind}: {detail}. It was not written or copied "
                              f"completely; fetch or copy it again (or use another checkpoint of the run, e.g. "
                              f"best.pth.tar)." if kind == "truncated" else
                              f"checkpoint {path!r} ({size} bytes) is {kind}: {detail}. Fetch or copy it again.") \
            from None


def _refusal(path: str, unsafe: List[str], trust_flag: Optional[str], resume: bool = False) -> str:
    """The message for a file that safe loading refuses because of the pickled objects ``unsafe``."""
    code = [n for n in unsafe if n.split(".")[0] in _CODE_MODULES]
    flag = trust_flag or f"'{_CONVERT_COMMAND} ... --trust-checkpoint'"
    if code:
        return (f"checkpoint {path!r} holds pickled code ({', '.join(code)}): loading it would run that code, so "
                f"it is refused. A checkpoint needs no code; do not load this file, get the checkpoint again from "
                f"a source you trust. ({flag} would load it and run that code: it is meant only for files whose "
                f"source you trust.)")
    if trust_flag:
        advice = (f"If you trust where this file comes from, pass {trust_flag}: it unpickles the file in full, "
                  f"which runs any code the file holds, so only for files you trust.")
    elif resume:
        advice = (f"A run resumes only from a checkpoint train.py wrote. If you trust where this file comes from, "
                  f"write a weights-only copy with '{_CONVERT_COMMAND} {path} OUT.pth.tar --trust-checkpoint' and "
                  f"start from it with --initial-checkpoint OUT.pth.tar.")
    else:
        advice = (f"If you trust where this file comes from, write a weights-only copy once with "
                  f"'{_CONVERT_COMMAND} {path} OUT.pth.tar --trust-checkpoint' (it unpickles the file in full, "
                  f"which runs any code the file holds) and use OUT.pth.tar.")
    return (f"checkpoint {path!r} holds pickled Python objects ({', '.join(unsafe)}) that safe (weights_only) "
            f"loading refuses, because unpickling them can run code. {advice}")


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
) -> Dict[str, list]:
    """Load weights into ``model`` by parameter name.

    Accepts a path to a ``.pth``/``.pth.tar`` (ours or the authors'), a raw state_dict or a
    dict holding it under ``state_dict`` / ``model``. DDP/compile prefixes are removed and the
    model's own ``filter_reference_state_dict`` (e.g. Spikformer's never-used LayerNorms) is
    applied. Older names are converted (:func:`convert_state_dict`); ``log`` (``print`` by
    default, ``None`` for silence) gets one line per renamed module. With ``strict`` any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` listing them; otherwise matching
    tensors are loaded and the report ``{'missing', 'unexpected', 'mismatched'}`` is returned.
    ``trust_pickle`` / ``trust_flag``: see :func:`read_checkpoint`.
    """
    obj = path_or_state_dict
    source = "checkpoint"
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
        raise CheckpointError("\n".join(lines))
    if renames and log is not None:
        log(f"{source}: older parameter names converted ({len(renames)} modules):")
        for old, new, how in renames:
            log(f"  {old} -> {new}  ({how})")
    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in sd.items() if k in own and k not in bad}
    target.load_state_dict(loadable, strict=False)
    return report


# ----------------------------------------------------------------------------------------------
# Training state: atomic saving, RNG capture and resume (training engine).
__all__ += ["save_checkpoint", "copy_checkpoint", "checkpoint_position", "capture_rng_state", "restore_rng_state",
            "read_training_state", "auto_resume_path"]


def save_checkpoint(state: Mapping[str, Any], path: Union[str, os.PathLike]) -> str:
    """Write ``state`` with ``torch.save`` atomically (:func:`utils.atomic_file.atomic_write`).

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a torn one; a
    full or read-only disk raises :class:`utils.atomic_file.FileWriteError` and leaves the previous one.
    """
    from utils.atomic_file import atomic_write

    return atomic_write(path, lambda f: torch.save(dict(state), f))


def copy_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> str:
    """Atomically copy a checkpoint file (used for ``best.pth.tar``)."""
    import shutil

    from utils.atomic_file import atomic_write

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
    import random

    import numpy as np

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
    import random

    import numpy as np

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
    ``args.model``). Plain entries (``epoch``, ``arch``, ``args``, ``metric``...) are kept, optimizer
    and scaler state are dropped; the result loads with ``weights_only`` safety.
    """
    from models.factory import ModelError, create_model, list_our_models

    flag = "--trust-checkpoint"
    obj = read_checkpoint(src, trust_pickle=trust_pickle, trust_flag=flag)
    name = model_name or _model_name_in(obj)
    if name is None:
        raise CheckpointError(f"{os.fspath(src)!r} does not record its model; pass --model NAME "
                              f"(one of: {', '.join(list_our_models())})")
    try:
        with torch.device("meta"):  # names and shapes only
            model = create_model(name, **dict(model_kwargs or {}))
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
    from utils.config.cli import Parser, writable_file

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
    from models.factory import ModelError, parse_model_kwargs
    from utils.errors import ConfigError
    from utils.output_files import check_outputs, record_outputs

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
