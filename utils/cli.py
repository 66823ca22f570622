"""Input checks shared by the argparse commands (``benchmark.py``, ``python -m utils.*``) and the run folder.

* argparse ``type=`` functions for numbers: finite, in range, integers that fit (:func:`number_type`,
  :data:`positive_int`, :data:`non_negative_int`, :data:`positive_float`, ...), :func:`int_list`
  (``1,4,16``) and :func:`machine_count` (threads / processes a machine can run);
* path checks that return the problem as one sentence, or None: :func:`readable_file_problem`,
  :func:`writable_folder_problem` (read-only or full file systems are named as such), :func:`inside_problem`;
  argparse types built on them: :func:`readable_file`, :func:`existing_folder`, :func:`writable_folder`,
  :func:`writable_file`;
* :func:`describe_os_error` and :func:`run_main`, the last line of defence of every entry point: an
  ``OSError`` becomes one line naming the path and the cause, a bad input one ``error:`` line (exit 2).

Config files (train.py, validate.py) are checked by ``utils.config``, which uses the path checks here.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from typing import Callable, List, Optional

from utils.errors import INPUT_ERRORS

__all__ = ["number_type", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "any_int", "int_list", "machine_count", "readable_file_problem", "writable_folder_problem",
           "inside_problem", "readable_file", "existing_folder", "writable_folder", "writable_file",
           "describe_os_error", "run_main", "INT64_MAX", "INT32_MAX"]

INT32_MAX = 2 ** 31 - 1
INT64_MAX = 2 ** 63 - 1
MIN_FREE_BYTES = 1 << 20  # a file system with less free space than this is reported as full


# ------------------------------------------------------------------------------------------ numbers
def number_type(cast, minimum, strict: bool = False, below: Optional[float] = None, what: str = "a number",
                maximum: Optional[float] = None):
    """argparse ``type=``: a finite ``cast`` value >= ``minimum`` (> with ``strict``; < ``below``, <= ``maximum``
    if given). Integers are also at most :data:`INT32_MAX` unless ``maximum`` says otherwise."""
    if cast is int and maximum is None:
        maximum = INT32_MAX

    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or (minimum is not None and (value < minimum or (strict and value == minimum)))
                or (below is not None and value >= below) or (maximum is not None and value > maximum)):
            limit = f" (at most {maximum})" if maximum is not None and math.isfinite(value) and value > maximum \
                else ""
            raise argparse.ArgumentTypeError(f"expected {what}{limit}, got {text}")
        return value

    return parse


positive_int = number_type(int, 1, what="a positive integer")
non_negative_int = number_type(int, 0, what="an integer >= 0")
any_int = number_type(int, -INT64_MAX - 1, maximum=INT64_MAX, what="an integer that fits in 64 bits")
non_negative_float = number_type(float, 0.0, what="a finite number >= 0")
positive_float = number_type(float, 0.0, strict=True, what="a finite number > 0")


def int_list(minimum: int = 1, what: str = "positive integers") -> Callable[[str], List[int]]:
    """argparse ``type=``: a comma-separated list of integers >= ``minimum`` (``1,4,16``)."""
    one = number_type(int, minimum, what=what[:-1] if what.endswith("s") else what)

    def parse(text: str) -> List[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. 1,4,16), got {text!r}")
        try:
            return [one(t) for t in items]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. 1,4,16), got {text!r}") \
                from None

    return parse


def machine_count(per_cpu: int = 1, floor: int = 1, what: str = "threads") -> Callable[[str], int]:
    """argparse ``type=``: a positive integer of ``what`` this machine can run (<= ``per_cpu`` x its CPUs)."""
    cpus = max(1, os.cpu_count() or 1)
    limit = max(floor, per_cpu * cpus)
    return number_type(int, 1, maximum=limit, what=f"a number of {what} from 1 to {limit} (this machine has "
                                                   f"{cpus} CPUs)")


# ------------------------------------------------------------------------------------------ paths
def readable_file_problem(path: str, what: str = "file") -> Optional[str]:
    """Why ``path`` cannot be read as a file (missing, a folder, not readable), or None."""
    if os.path.isdir(path):
        return f"{what} {path} is a folder; give a file"
    if not os.path.exists(path):
        return f"{what} not found: {path}"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable (permission denied); fix its permissions or copy it"
    return None


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def writable_folder_problem(path: str, what: str = "output folder") -> Optional[str]:
    """Why files cannot be written in folder ``path`` (created if missing): a file in the way, no permission,
    a read-only or full file system; None when they can. Nothing is created."""
    target = os.path.abspath(os.path.expanduser(path))
    base = _nearest_existing(target)
    if not os.path.isdir(base):
        where = "" if base == target else f" (on the way to {target})"
        return f"{what} {base}{where} is a file, not a folder; choose another path"
    try:
        st = os.statvfs(base)
    except OSError:
        st = None
    if st is not None and st.f_flag & os.ST_RDONLY:
        return f"{what} {target} is on a read-only file system ({base}); choose a writable folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{what} {target} is not writable (permission denied on {base}); choose another folder"
    if st is not None and st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return (f"{what} {target} is on a full file system ({st.f_bavail * st.f_frsize} bytes free at {base}); "
                f"free space or choose another folder")
    return None


def inside_problem(root: str, name: str, key: str = "experiment") -> Optional[str]:
    """Why ``<root>/<name>`` is not a folder strictly inside ``root`` (absolute name, ``..``), or None."""
    if not name or not name.strip():
        return f"{key} is empty; give a name such as my_run"
    if os.path.isabs(os.path.expanduser(name)):
        return f"{key} '{name}' is an absolute path; it names a folder inside the output root, e.g. {key} my_run"
    root = os.path.abspath(os.path.expanduser(root))
    full = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, full]) != root or full == root:
        return (f"{key} '{name}' leads outside the output root {root} (no '..', not the root itself); "
                f"choose a plain name such as my_run, or change --output")
    return None


def _arg_type(problem: Callable[[str], Optional[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        msg = problem(text)
        if msg:
            raise argparse.ArgumentTypeError(msg)
        return text

    return parse


readable_file = _arg_type(readable_file_problem)
writable_folder = _arg_type(writable_folder_problem)


def _existing_folder_problem(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return f"folder not found: {path}"
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"folder {path} is not readable (permission denied)"
    return None


def _writable_file_problem(path: str) -> Optional[str]:
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name inside it"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable (permission denied); choose another file"
    return writable_folder_problem(os.path.dirname(os.path.abspath(path)) or ".", "folder")


existing_folder = _arg_type(_existing_folder_problem)
writable_file = _arg_type(_writable_file_problem)


# ------------------------------------------------------------------------------------------ last line of defence
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
}


def describe_os_error(err: OSError) -> str:
    """One line: the path(s), what failed and the fix."""
    path = err.filename if err.filename is not None else "?"
    if getattr(err, "filename2", None):
        path = f"{path} -> {err.filename2}"
    cause = _FIXES.get(err.errno, err.strerror or type(err).__name__)
    return f"cannot use {path}: {cause}"


def run_main(main: Callable[..., object], argv=None) -> int:
    """Call ``main(argv)`` for ``if __name__ == '__main__'``: an ``OSError`` prints one ``error:`` line naming
    the path (exit 1), a bad-input error (config, dataset, checkpoint, model) its message (exit 2)."""
    from models.factory import ModelError
    try:
        result = main(argv)
    except INPUT_ERRORS + (ModelError,) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
