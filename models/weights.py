"""Reading weights files: the one owner of "what is wrong with this file".

:func:`read_weights` is ``torch.load`` (or safetensors) on CPU with ``weights_only`` safety, and every failure
names the file and what is wrong with it: not found, empty, truncated, damaged, not a checkpoint (a text
file, another format), or holding pickled objects that are unsafe to unpickle. ``timm.create_model(...,
pretrained=True)`` reads local files through it, and ``utils.training.checkpoint`` (every command) too.
:func:`stored_model_kwargs` reads the model kwargs a checkpoint of this repository records.
"""
from __future__ import annotations

import argparse
import errno
import os
import pickletools
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg

from .errors import WeightsError

__all__ = ["WeightsError", "read_weights", "stored_model_kwargs"]

_CONVERT_COMMAND = "python -m utils.training.checkpoint convert"


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# Modules whose callables torch's weights_only unpickler never admits: a file naming them holds code to run.
_CODE_MODULES = ("os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket",
                 "importlib", "runpy", "pty", "code", "ctypes", "marshal", "pickle", "webbrowser", "commands")


def _pickle_scan(data: bytes) -> Tuple[List[str], Optional[str]]:
    """Globals a pickle stream names and why it cannot be read to its end (None: it can), without running it."""
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


def read_weights(path: Union[str, os.PathLike], trust_pickle: bool = False,
                    trust_flag: Optional[str] = None, resume: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only`` safety; every failure is a :class:`WeightsError` naming the path.

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
        raise WeightsError(f"checkpoint {path!r} is a folder; pass the checkpoint file inside it")
    if not os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        near = sorted(f for f in os.listdir(folder) if ".pth" in f or f.endswith(".pt"))[:5] \
            if os.path.isdir(folder) and os.access(folder, os.R_OK) else []
        hint = f" Checkpoints in that folder: {', '.join(near)}." if near else ""
        raise WeightsError(f"checkpoint not found: {path!r}.{hint}")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"checkpoint {path!r} is not readable (permission denied); fix its permissions")
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsError(f"checkpoint {path!r} is empty (0 bytes): it was not written completely "
                              "(an interrupted download or copy?). Fetch or copy it again.")
    if path.endswith(".safetensors"):
        return _read_safetensors(path, size)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.ENOENT, errno.EISDIR, errno.EIO):
            raise WeightsError(f"cannot read checkpoint {path!r}: {err.strerror or err}") from None
        failure: BaseException = err  # torch reports some damaged archives as an OSError (EINVAL)
    except Exception as err:  # torch raises many types for damaged or refused files; each is classified below
        failure = err
    unsafe = [] if trust_pickle else _unsafe_globals(path, failure)
    if unsafe:
        raise WeightsError(_refusal(path, unsafe, trust_flag, resume))
    kind, detail = _damage(path, size, failure)
    if kind == "not a checkpoint":
        raise WeightsError(f"{path!r} ({size} bytes) is not a PyTorch checkpoint: {detail}. Check the path "
                           f"(a checkpoint is a file written by torch.save, e.g. last.pth.tar).")
    if kind == "truncated":
        raise WeightsError(f"checkpoint {path!r} ({size} bytes) is {kind}: {detail}. It was not written or copied "
                           f"completely; fetch or copy it again (or use another checkpoint of the run, e.g. "
                           f"best.pth.tar).")
    raise WeightsError(f"checkpoint {path!r} ({size} bytes) is {kind}: {detail}. Fetch or copy it again.")


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


def _read_safetensors(path: str, size: int) -> Dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path!r} ({size} bytes) is not a readable safetensors file: {err}. It was not written "
                           f"or copied completely; fetch or copy it again.") from None


def stored_model_kwargs(obj: Any, model: str) -> Dict[str, Any]:
    """The kwargs that built the model of a checkpoint train.py wrote (its ``config``: ``model_kwargs``, ``T`` and
    ``num_classes``, or the classifier's rows when the config left it to the dataset), if it was ``model``;
    ``{}`` for other files. Explicit kwargs go on top of these."""
    config = obj.get("config") if isinstance(obj, Mapping) else None
    if not isinstance(config, Mapping) or config.get("model") != model.split(".")[0]:
        return {}

    try:
        classifier = getattr(get_pretrained_cfg(model), "classifier", None) or "head"
    except RuntimeError:  # not a registered name: the caller says so
        classifier = "head"
    kwargs = dict(config.get("model_kwargs") or {})
    if isinstance(config.get("T"), int):
        kwargs["T"] = config["T"]
    num_classes = config.get("num_classes")
    weight = (obj.get("state_dict") or {}).get(f"{classifier}.weight") if isinstance(obj.get("state_dict"), Mapping) \
        else None
    if num_classes is None and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        num_classes = int(weight.shape[0])
    if isinstance(num_classes, int):
        kwargs["num_classes"] = num_classes
    return kwargs
