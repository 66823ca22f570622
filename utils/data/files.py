"""Data errors, file checks and safe loading: nothing unreadable is skipped silently, nothing is executed.

* :class:`DatasetError`: a dataset is missing, incomplete or misconfigured; :class:`BadSampleError`: one
  sample file cannot be read (raised when it is read, naming the file).
* :class:`NamedSampleErrors`: mixin for torchvision folder datasets that raises ``BadSampleError``.
* :func:`verify_files` (``verify_data: true``): read every sample file once and list all unreadable ones.
* :class:`CifarUnpickler` / :func:`read_cifar_batch`: CIFAR batch files (pickles) read admitting only what
  the format holds, so a crafted file cannot run code.
"""
import codecs
import pickle
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Subset

from utils.errors import DatasetError


class BadSampleError(DatasetError):
    """One sample file cannot be read. ``.path`` is the file, ``.index`` its index in the dataset.

    Raised when the sample is loaded (also from DataLoader workers: the re-raised copy recovers ``.path`` and
    ``.index`` from the message), so a training loop can save its state and stop naming the file.
    """

    _PATTERN = re.compile(r"cannot read sample file (.+) \(index (\d+)\)")

    def __init__(self, message: str, path: Optional[str] = None, index: Optional[int] = None):
        match = self._PATTERN.search(message)
        if path is None and match:  # rebuilt from a worker's traceback text: keep our message, drop the rest
            path, index = match.group(1), int(match.group(2))
            message = message[match.start():].split("\n\n")[0].rstrip()
        super().__init__(message)
        self.path, self.index = path, index

    @classmethod
    def from_error(cls, path, index: int, err: BaseException) -> "BadSampleError":
        return cls(f"cannot read sample file {path} (index {index})\n"
                   f"  reason: {type(err).__name__}: {err}\n"
                   f"  fix: replace it with a good copy, or delete it (the dataset then has one sample less); "
                   f"--verify-data true lists every unreadable file at start", path=str(path), index=index)


class NamedSampleErrors:
    """Mixin for torchvision ``DatasetFolder`` datasets: a file that fails to load raises ``BadSampleError``.

    Only the file read is guarded (transform errors stay what they are).
    """

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except Exception as err:  # any decoder error of any format: report the file
            raise BadSampleError.from_error(path, index, err) from err
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


def warn_count(name: str, split: str, got: int, expected: int) -> None:
    """Warn when a split's sample count differs from the official one."""
    if got != expected:
        warnings.warn(f"{name} {split} split has {got} samples, the official one has {expected} "
                      f"(fine for a subset, but results are not comparable with the paper)", stacklevel=3)


def _sample_files(ds) -> List[Tuple[str, Callable]]:
    base = ds.dataset if isinstance(ds, Subset) else ds
    if not isinstance(base, NamedSampleErrors):
        return []  # read into memory when built (CIFAR, digits, synthetic): already checked
    indices = ds.indices if isinstance(ds, Subset) else range(len(base))
    return [(base.samples[i][0], base.loader) for i in indices]


def find_unreadable(datasets: Sequence, workers: int = 4) -> List[Tuple[str, str]]:
    """Read every sample file of ``datasets`` once; ``[(path, reason), ...]`` of those that fail, sorted."""
    files = sorted({path: loader for ds in datasets if ds is not None for path, loader in _sample_files(ds)}.items())

    def check(item):
        path, loader = item
        try:
            loader(path)
        except Exception as err:  # any decoder error: reported with the file
            return path, f"{type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [bad for bad in pool.map(check, files) if bad is not None]


def verify_files(train_set, eval_set, workers: int = 4, show: int = 20) -> None:
    """Raise ``DatasetError`` listing every unreadable sample file of the two sets (``verify_data: true``)."""
    bad = find_unreadable([train_set, eval_set], workers)
    if bad:
        lines = [f"  {path}: {reason}" for path, reason in bad[:show]]
        more = [f"  ... and {len(bad) - show} more"] if len(bad) > show else []
        raise DatasetError("\n".join([f"{len(bad)} unreadable sample file(s):"] + lines + more + [
            "Replace them with good copies or delete them, then start again."]))


class CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python batches: admits only what the format holds.

    The batches are dicts of str/bytes, int lists and uint8 numpy arrays; rebuilding an array needs numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype`` (``_frombuffer`` for files written at protocol 5, and
    ``_codecs.encode`` for bytes written by Python 3 at protocol 2). Any other global (e.g. ``os.system`` in a
    crafted ``__reduce__``) raises ``UnpicklingError`` before anything is called.
    """

    _RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.core / numpy._core .multiarray._reconstruct
    _FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.core / numpy._core .numeric._frombuffer
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
               ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only dicts, lists, "
                                     f"strings and numpy arrays, so this is not an original CIFAR file "
                                     f"(loading it could run code)")


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch/meta file as a dict, read with :class:`CifarUnpickler`.

    Raises ``DatasetError`` naming the file when it is not a readable CIFAR batch.
    """
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as err:
        raise DatasetError(f"{path} is not a readable CIFAR batch ({type(err).__name__}: {err}). Delete "
                           f"{Path(path).parent} and download it again (--download true).") from None
    if not isinstance(entry, dict):
        raise DatasetError(f"{path} is not a CIFAR batch (holds a {type(entry).__name__}, not a dict). Delete "
                           f"{Path(path).parent} and download it again (--download true).")
    return entry
