"""``cifar10dvs`` / ``dvsgesture``: spikingjelly's event datasets, read as integrated frames ``[T, 2, H, W]``.

Frames are made once by ``python -m utils.tools.prepare_data`` into :func:`frames_dir`; loading never starts a
download or a conversion. CIFAR10-DVS uses the published per-class 9:1 split (:func:`split_per_class`), decided by
each sample's file name so that removing a file moves no other sample between train and test.
"""
import math
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from torch.utils.data import Subset

from .files import DatasetError, NamedSampleErrors
from .spec import DatasetSpec, Splits, prepare_cmd
from .transforms import EventFrames

CIFAR10DVS_TRAIN_RATIO = 0.9
CIFAR10DVS_URL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"
GESTURE_URL = "https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794"
GESTURE_FILES = ("DvsGesture.tar.gz", "gesture_mapping.csv", "LICENSE.txt", "README.txt")  # spikingjelly checks all


def frames_dir(root: Path, T: int) -> Path:
    """The folder of the frames for ``T`` time steps under a dataset folder (written by ``prepare_data``)."""
    return root / f"frames_number_{T}_split_by_number"


_FRAME_CLASSES = ("CIFAR10DVSFrames", "DVS128GestureFrames")  # created on first use (see __getattr__)


def _make_frames_class(class_name: str) -> type:
    """spikingjelly's dataset class, reading already-integrated frames without touching the raw data.

    A frame file that cannot be read raises ``BadSampleError`` naming it (``NamedSampleErrors``).

    spikingjelly's ``prepare_raw_dataset`` would start a download (CIFAR10-DVS) or fail (Gesture) when the
    intermediate ``events_np/`` folder is absent, even if the frames exist. Frame integration is done
    explicitly by ``python -m utils.tools.prepare_data``, so loading never starts a download or a conversion.
    """
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS  # lazy: see __getattr__
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    base = {"CIFAR10DVSFrames": CIFAR10DVS, "DVS128GestureFrames": DVS128Gesture}[class_name]
    cls = type(class_name, (NamedSampleErrors, base), {"prepare_raw_dataset": lambda self: None,
                                                       "__module__": __name__, "__doc__": _make_frames_class.__doc__})
    globals()[class_name] = cls
    return cls


def __getattr__(attr: str) -> type:
    # Lazy module attributes (PEP 562): importing spikingjelly.datasets costs seconds, so the frame classes are
    # created on first use; defined here so that DataLoader workers can pickle them by name.
    if attr in _FRAME_CLASSES:
        return _make_frames_class(attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _check_frames(spec: DatasetSpec, root: Path, T: int) -> None:
    frames = frames_dir(root, T)
    marker = frames.with_name(frames.name + ".building")
    if marker.exists():
        raise spec.missing_error(root, f"frame conversion into {frames} did not finish (found {marker.name}). "
                                     f"Delete {frames} and {marker}, then rerun the command below.", T)
    if not frames.is_dir():
        other = sorted(p.name for p in root.glob("frames_number_*_split_by_number")) if root.is_dir() else []
        hint = f" (found {', '.join(other)}: frames for another T; T={T} is requested)" if other else ""
        raise spec.missing_error(root, f"no frames for T={T} in {root}{hint}", T)
    if spec.name == "cifar10dvs":
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES  # lazy: see __getattr__

        expected = [frames / c for c in CIFAR10DVS_CLASS_NAMES]
    else:
        expected = [frames / split / str(c) for split in ("train", "test") for c in range(11)]
    missing = [str(p.relative_to(root)) for p in expected if not p.is_dir() or not any(p.glob("*.np[yz]"))]
    if missing:
        raise spec.missing_error(root, f"frames incomplete: empty or missing class folders {', '.join(missing)}", T)


_NUMBERED = re.compile(r"(.*_)(\d+)(\.[^.]+)$")  # cifar10_airplane_17.npz


def split_per_class(targets: Sequence[int], train_ratio: float = CIFAR10DVS_TRAIN_RATIO,
                    names: Optional[Sequence[str]] = None) -> Tuple[List[int], List[int]]:
    """Published CIFAR10-DVS split: per class, the first ceil(ratio * n) samples in dataset order -> train.

    With ``names`` (the samples' file names, numbered ``<prefix>_<i>.<ext>`` as the dataset's files are) a
    sample's side depends on its own name, not on its index: the rule is applied to the complete list
    ``<prefix>_0 .. <prefix>_<n-1>`` in the dataset's (sorted) order, n = the highest number + 1. On the complete
    dataset that is the published split; a file removed leaves every other sample on its side. A class whose
    names do not follow that pattern gets the index rule. Returns (train_indices, test_indices), in dataset order.
    """
    by_class = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train_idx, test_idx = [], []
    for c in sorted(by_class):
        idx = by_class[c]
        train = _train_names(c, [names[i] for i in idx], train_ratio) if names is not None else None
        if train is None:
            cut = math.ceil(len(idx) * train_ratio)
            train_idx += idx[:cut]
            test_idx += idx[cut:]
        else:
            for i in idx:
                (train_idx if names[i] in train else test_idx).append(i)
    return sorted(train_idx), sorted(test_idx)


def _train_names(label: int, names: Sequence[str], train_ratio: float) -> Optional[set]:
    """The training-side names of one class under the published rule on its complete numbered list, or None when
    the names are not ``<prefix>_<i>.<ext>`` with one prefix and extension."""
    parts = [_NUMBERED.match(n) for n in names]
    if not parts or not all(parts) or len({(m.group(1), m.group(3)) for m in parts}) != 1:
        return None
    prefix, ext = parts[0].group(1), parts[0].group(3)
    complete = sorted(f"{prefix}{i}{ext}" for i in range(max(int(m.group(2)) for m in parts) + 1))
    return set(complete[:math.ceil(len(complete) * train_ratio)])


def build_events(cfg, spec: DatasetSpec, include_train: bool, frames_class: str) -> Splits:
    """``(train, eval)`` frame datasets for ``T`` time steps; ``train`` is None unless ``include_train``."""
    name, root = spec.name, spec.root(cfg)
    T = int(cfg.T)
    img_size = cfg.img_size
    if img_size not in (None, spec.img_size):
        raise DatasetError(f"{name}: img_size={img_size} is not supported; event frames are used at their native "
                           f"{spec.img_size}x{spec.img_size} (set img_size to null or {spec.img_size})")
    if cfg.download:
        raise DatasetError(f"{name}: download=true is not supported inside training (conversion takes long and "
                           f"must not run once per process). Run once:\n  "
                           + prepare_cmd(name, root, T, download=name == "cifar10dvs"))
    _check_frames(spec, root, T)
    cls = globals().get(frames_class) or _make_frames_class(frames_class)
    augment = bool(cfg.event_augment)
    train_tf, eval_tf = EventFrames(augment, cfg.hflip), EventFrames(False)
    kw = dict(data_type="frame", frames_number=T, split_by="number")
    try:
        if name == "cifar10dvs":
            eval_full = cls(str(root), transform=eval_tf, **kw)
            train_idx, test_idx = split_per_class(eval_full.targets,
                                                  names=[os.path.basename(p) for p, _ in eval_full.samples])
            eval_set = Subset(eval_full, test_idx)
            train_set = Subset(cls(str(root), transform=train_tf, **kw), train_idx) if include_train else None
        else:
            eval_set = cls(str(root), train=False, transform=eval_tf, **kw)
            train_set = cls(str(root), train=True, transform=train_tf, **kw) if include_train else None
    except (FileNotFoundError, RuntimeError) as e:
        raise spec.missing_error(root, f"spikingjelly could not read the frames ({e})", T) from None
    return train_set, eval_set
