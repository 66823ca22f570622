"""Writing a file so that a crash, a full disk or a read-only folder never leaves it torn or emptied.

:func:`atomic_write` writes a temp file next to the target, fsyncs it and renames it over the target: a
reader (or a resume after SIGKILL) sees the previous file or the new one. When the disk refuses the
write (no space, read-only, quota, permissions) the temp file is removed, the previous file is left as
it was and :class:`FileWriteError` names the file and the cause. Every file of a run folder is written
through here.
"""
from __future__ import annotations

import errno
import glob
import os
from typing import IO, Callable, Union

__all__ = ["atomic_write", "FileWriteError"]

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}
_REMEDIES = {errno.ENOSPC: "Free space on that disk", errno.EDQUOT: "Free space within your quota",
             errno.EROFS: "Make that file system writable again", errno.EACCES: "Make that folder writable for you",
             errno.EPERM: "Make that folder writable for you"}


class FileWriteError(OSError):
    """``path`` could not be written; the file that was there before is intact."""

    def __init__(self, path: str, err: OSError):
        self.path, self.reason = path, _REASONS.get(err.errno, err.strerror or str(err))
        self.remedy = _REMEDIES.get(err.errno, "Fix the cause")  # the first words of the advice
        super().__init__(err.errno, self.reason, path)  # filename: the commands' OSError line names the path
        self.kept = ""  # what the caller still holds, for the message (e.g. "last.pth.tar holds epoch 3")
        self.shared = False  # raised by every rank of a distributed run at the same point

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.reason}"


class _RecordingFile:
    """A file whose ``write`` writes all of ``data`` or raises, and remembers the OSError it raised: on a full
    disk a write can be short without an error, which ``torch.save`` reports as a RuntimeError."""

    def __init__(self, f: IO):
        self._f, self.error = f, None

    def write(self, data):
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                n = self._f.write(view[done:])
                done += len(view) - done if n is None else n
        except OSError as err:
            self.error = err
            raise
        return done

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: Union[str, os.PathLike], content: Union[bytes, str, Callable[[IO], None]]) -> str:
    """Write ``content`` (bytes, text, or a function writing to a binary file) to ``path`` atomically.

    Raises :class:`FileWriteError` when the disk refuses; leftovers of writers killed mid-write are removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    recording = None
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            if callable(content):
                recording = _RecordingFile(f)
                content(recording)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        cause = err if isinstance(err, OSError) else getattr(recording, "error", None)
        if cause is not None and not isinstance(cause, FileWriteError):
            raise FileWriteError(path, cause) from None
        raise
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
    _fsync_dir(folder)
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a process killed mid-write
        try:
            os.remove(stale)
        except OSError:
            pass
    return path


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
