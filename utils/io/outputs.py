"""The one rule for a command's output files: never over an input, never over a file the command did not write.

:func:`check_outputs` runs before any work: an output path that is one of the command's inputs is refused
always; an existing file is refused unless the command wrote it there itself (and it is unchanged since),
or ``overwrite`` is set. :func:`record_outputs` notes the files a command wrote in the folder's
``.outputs.json`` (name, size, modification time), so that running the same command again replaces its own
outputs. A checkpoint, a run folder's file or a user's file is named as such in the refusal.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Iterable, Optional, Union

from utils.errors import ConfigError

__all__ = ["check_outputs", "record_outputs", "OUTPUTS_MANIFEST"]

OUTPUTS_MANIFEST = ".outputs.json"
_RUN_MARKERS = ("args.yaml", "run.lock", "status.json", "last.pth.tar")
PathLike = Union[str, os.PathLike]


def _manifest(folder: str) -> Dict[str, list]:
    try:
        with open(os.path.join(folder, OUTPUTS_MANIFEST)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def written_here(path: PathLike) -> bool:
    """True when ``path`` is a file a command recorded writing (:func:`record_outputs`) and unchanged since."""
    path = os.path.abspath(path)
    entry = _manifest(os.path.dirname(path)).get(os.path.basename(path))
    try:
        return entry is not None and list(entry) == _stamp(path)
    except OSError:
        return False


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _what(path: str) -> str:
    """What an existing file is, for the refusal."""
    folder = os.path.dirname(path)
    if path.endswith((".pth.tar", ".pth", ".pt", ".safetensors", ".bin")):
        kind = "a checkpoint"
    else:
        with open(path, "rb") as f:
            kind = "a checkpoint" if f.read(4) == b"PK\x03\x04" else "a file"
    if any(os.path.exists(os.path.join(folder, m)) for m in _RUN_MARKERS):
        return f"{kind} of the run folder {folder}"
    return f"{kind} this command did not write"


def check_outputs(outputs: Dict[str, PathLike], overwrite: bool = False, inputs: Iterable[Optional[PathLike]] = (),
                  flag: str = "--overwrite", ours: Optional[Callable[[str], bool]] = None) -> None:
    """Refuse (:class:`~utils.errors.ConfigError`) to write any of ``outputs`` (``{what: path}``, e.g.
    ``{"--results-file": path}``) that is one of ``inputs``, or an existing file not written by a command
    (:func:`record_outputs`, or ``ours(path)`` for outputs recognised by their content) unless ``overwrite``;
    the message names the file and the way out."""
    for what, path in outputs.items():
        path = os.fspath(path)
        for src in inputs:
            if src and os.path.exists(os.fspath(src)) and _same(path, os.fspath(src)):
                same = "" if os.path.abspath(path) == os.path.abspath(src) else f" ({os.fspath(src)})"
                raise ConfigError(f"{what} {path} is also an input of this command{same}: writing it would destroy "
                                  f"what is read; choose another path")
        if not os.path.isfile(path) or overwrite or written_here(path) or (ours is not None and ours(path)):
            continue
        raise ConfigError(f"{what} {path} already exists: it is {_what(path)}, and it is not replaced. Choose "
                          f"another path, or pass {flag} to replace it")


def record_outputs(*paths: PathLike) -> None:
    """Note ``paths`` (just written) in their folders' ``.outputs.json``: a later run may replace them."""
    by_folder: Dict[str, list] = {}
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isfile(p):
            by_folder.setdefault(os.path.dirname(p), []).append(p)
    for folder, files in by_folder.items():
        manifest = _manifest(folder)
        manifest.update({os.path.basename(p): _stamp(p) for p in files})
        try:
            with open(os.path.join(folder, OUTPUTS_MANIFEST), "w") as f:
                json.dump(manifest, f, indent=0)
        except OSError:  # the outputs are written; only their later replacement will ask for the flag
            pass
