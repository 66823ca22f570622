"""Checkpoint I/O: loading weights (ours or the authors' released files) by name.

Training-state saving and resuming live further down in this module.
"""
from __future__ import annotations

import argparse
import os
import pickle
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "read_checkpoint", "extract_state_dict", "load_checkpoint"]

# Wrapper prefixes added by DDP and torch.compile; removed by name, never by position.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""


def read_checkpoint(path: Union[str, os.PathLike], trust_pickle: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only`` safety.

    The authors' ``.pth.tar`` files also pickle an ``argparse.Namespace``; that one class is
    allow-listed. Anything else needs ``trust_pickle=True`` (only for files you trust).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path!r}")
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as err:
        raise CheckpointError(
            f"{path!r} holds objects that weights_only loading refuses ({str(err).splitlines()[0]}). "
            "If you trust this file, pass trust_pickle=True (CLI: --trust-checkpoint)."
        ) from None


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
            raise CheckpointError(f"checkpoint has no entry {key!r}; it has {sorted(obj)[:10]}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(obj)[:10]})")
    return sd


def _strip_prefixes(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    key: Optional[str] = None,
    trust_pickle: bool = False,
) -> Dict[str, list]:
    """Load weights into ``model`` by parameter name.

    Accepts a path to a ``.pth``/``.pth.tar`` (ours or the authors'), a raw state_dict or a
    dict holding it under ``state_dict`` / ``model``. DDP/compile prefixes are removed and the
    model's own ``filter_reference_state_dict`` (e.g. Spikformer's never-used LayerNorms) is
    applied. With ``strict`` any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` listing them; otherwise matching tensors are loaded and the
    report ``{'missing', 'unexpected', 'mismatched'}`` is returned.
    """
    obj = path_or_state_dict
    if not isinstance(obj, Mapping):
        obj = read_checkpoint(obj, trust_pickle=trust_pickle)
    sd = _strip_prefixes(extract_state_dict(obj, key))
    target = getattr(model, "module", model)  # accept a DDP-wrapped model
    hook = getattr(target, "filter_reference_state_dict", None)
    if callable(hook):
        sd = hook(sd)
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
        lines = [f"checkpoint does not fit {name} ({len(own)} keys in model, {len(sd)} in checkpoint):"]
        for label, items in report.items():
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                lines.append(f"  {label} ({len(items)}):\n    {shown}")
        lines.append("Check that the model name, num_classes, embed_dims and T match the checkpoint, or pass strict=False.")
        raise CheckpointError("\n".join(lines))
    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in sd.items() if k in own and k not in bad}
    target.load_state_dict(loadable, strict=False)
    return report


# ----------------------------------------------------------------------------------------------
# Training state: atomic saving, RNG capture and resume (training engine).
__all__ += ["save_checkpoint", "copy_checkpoint", "capture_rng_state", "restore_rng_state",
            "read_training_state", "auto_resume_path"]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: Union[str, os.PathLike]) -> str:
    """Write ``state`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename.

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a torn one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)
    import glob

    for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a process killed mid-write
        try:
            os.remove(stale)
        except OSError:
            pass
    return path


def copy_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> str:
    """Atomically copy a checkpoint file (used for ``best.pth.tar``)."""
    import shutil

    src, dst = os.fspath(src), os.fspath(dst)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))
    return dst


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


def read_training_state(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a checkpoint written by ``train.py`` for resuming; clear error for weights-only files."""
    obj = read_checkpoint(path)
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
