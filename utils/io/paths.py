"""File-system checks before anything is written or read: why a path cannot be read, written or used as a
folder inside a root (one line naming the path and the fix, or None), and :func:`describe_os_error`."""
from __future__ import annotations

import errno
import os
from typing import Optional

__all__ = ["readable_file_problem", "writable_folder_problem", "inside_problem", "existing_folder_problem",
           "writable_file_problem", "describe_os_error", "MIN_FREE_BYTES"]

MIN_FREE_BYTES = 1 << 20  # a file system with less free space than this is reported as full


def readable_file_problem(path: str, what: str = "file") -> Optional[str]:
    """Why ``path`` cannot be read as a file (missing, a symlink loop, a folder, not readable), or None."""
    if os.path.isdir(path):
        return f"{what} {path} is a folder; give a file"
    if not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"{what} {path} is a symlink loop (a link that leads back to itself); give the file itself"
        if os.path.islink(path):
            return f"{what} {path} is a symlink to {os.readlink(path)}, which does not exist"
        return f"{what} not found: {path}"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable (permission denied); fix its permissions or copy it"
    return None


def writable_folder_problem(path: str, what: str = "output folder") -> Optional[str]:
    """Why files cannot be written in folder ``path`` (created if missing): a file in the way, no permission,
    a read-only or full file system; None when they can. Nothing is created."""
    target = base = os.path.abspath(os.path.expanduser(path))
    while not os.path.lexists(base) and os.path.dirname(base) != base:
        base = os.path.dirname(base)
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
    """Why ``<root>/<name>`` is not a folder strictly inside ``root`` (absolute, ``..``, a part longer than a
    file name can be), or None."""
    if not name or not name.strip():
        return f"{key} is empty; give a name such as my_run"
    if os.path.isabs(os.path.expanduser(name)):
        return f"{key} '{name}' is an absolute path; it names a folder inside the output root, e.g. {key} my_run"
    root = os.path.abspath(os.path.expanduser(root))
    full = os.path.normpath(os.path.join(root, name))
    if os.path.commonpath([root, full]) != root or full == root:
        return (f"{key} '{name}' leads outside the output root {root} (no '..', not the root itself); "
                f"choose a plain name such as my_run, or change --output")
    longest = max(name.split(os.sep), key=lambda part: len(part.encode()))
    if len(longest.encode()) > 255:  # NAME_MAX of every common file system
        return (f"{key} name is too long: '{longest[:40]}...' is {len(longest.encode())} bytes, a folder name holds "
                f"at most 255; choose a shorter --{key} (nothing was written)")
    return None


def existing_folder_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an existing, readable folder, or None."""
    if not os.path.exists(path):
        return f"folder not found: {path}"
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    return None if os.access(path, os.R_OK | os.X_OK) else f"folder {path} is not readable (permission denied)"


def writable_file_problem(path: str) -> Optional[str]:
    """Why file ``path`` cannot be written (a folder, not writable, its folder unusable), or None."""
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name inside it"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable (permission denied); choose another file"
    return writable_folder_problem(os.path.dirname(os.path.abspath(path)) or ".", "folder")



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
    path = f"{path} -> {err.filename2}" if getattr(err, "filename2", None) else path
    return f"cannot use {path}: {_FIXES.get(err.errno, err.strerror or type(err).__name__)}"
