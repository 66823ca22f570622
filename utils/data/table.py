"""The dataset table (:data:`DATASETS`, one :class:`DatasetSpec` per dataset) and the functions that read it.

Adding a dataset is one entry here plus its builder (a module beside this one); docs/data.md shows how.
"""
import difflib
from functools import partial
from pathlib import Path
from typing import Dict, Optional

from torch.utils.data import Subset

from models.common import DATA_CFG  # owner of the CIFAR-10 / ImageNet normalisation statistics

from ..errors import ConfigError
from .cifar import CIFAR10Files, CIFAR100Files, build_cifar
from .digits import build_digits
from .events import GESTURE_FILES, GESTURE_URL, build_events
from .files import DatasetError, verify_files, warn_count
from .imagefolder import build_imagefolder
from .spec import DatasetSpec, Splits
from .synthetic import build_synthetic

_FRAMES_NOTE = "extract/, events_np/                   <- intermediate files of spikingjelly"
_CIFAR_PREPARE = ("Prepare it with (downloads ~170 MB):", "  {cmd_download}",
                  "or set the config key download: true for train.py, or point data_path (--data-path) at the",
                  "folder that contains {folder}/.")

DATASETS: Dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec("digits", build_digits, 10, 3, "image", 32, (0.3053,) * 3, (0.3236,) * 3, 1437, 360,
                note="bundled with scikit-learn"),
    DatasetSpec("synthetic", build_synthetic, 10, 3, "image", 32, None, None, 5000, 1000,
                note="generated in memory"),
    DatasetSpec("cifar10", partial(build_cifar, cls=CIFAR10Files), 10, 3, "image", 32,
                DATA_CFG["cifar"]["mean"], DATA_CFG["cifar"]["std"], 50000, 10000,
                tree=("cifar-10-batches-py/", "    batches.meta", "    data_batch_1 ... data_batch_5",
                      "    test_batch"),
                prepare=_CIFAR_PREPARE, aliases=("torch/cifar10",)),
    DatasetSpec("cifar100", partial(build_cifar, cls=CIFAR100Files), 100, 3, "image", 32,
                (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 50000, 10000,
                tree=("cifar-100-python/", "    meta", "    train", "    test"),
                prepare=_CIFAR_PREPARE, aliases=("torch/cifar100",)),
    DatasetSpec("cifar10dvs", partial(build_events, frames_class="CIFAR10DVSFrames"), 10, 2, "event", 128,
                None, None, 9000, 1000,
                tree=("{frames}/            <- frames used for training (T={T}), made by prepare_data",
                      '    airplane/  cifar10_airplane_0.npz ... (1000 files, key "frames": [T,2,128,128])',
                      "    automobile/ bird/ cat/ deer/ dog/ frog/ horse/ ship/ truck/",
                      "download/  airplane.zip ... truck.zip   <- raw recordings (or --download)", _FRAMES_NOTE),
                prepare=("Prepare it with (downloads the recordings from figshare and converts them to frames):",
                         "  {cmd_download}", "or put the 10 class zips in download/ and drop --download."),
                aliases=("cifar10-dvs",)),
    DatasetSpec("dvsgesture", partial(build_events, frames_class="DVS128GestureFrames"), 11, 2, "event", 128,
                None, None, 1176, 288,
                tree=("{frames}/            <- frames used for training (T={T}), made by prepare_data",
                      '    train/0/ ... train/10/   (1176 files, key "frames": [T,2,128,128])',
                      "    test/0/  ... test/10/    (288 files)",
                      "download/  DvsGesture.tar.gz gesture_mapping.csv LICENSE.txt README.txt  <- manual download",
                      "extract/, events_np/        <- intermediate files of spikingjelly"),
                prepare=("DVS128 Gesture cannot be downloaded automatically (IBM licence). Download the four files",
                         ", ".join(GESTURE_FILES) + " from", "  " + GESTURE_URL,
                         "into {root}/download, then run", "  {cmd}"),
                aliases=("dvs128gesture", "dvs128", "dvs_gesture")),
    DatasetSpec("imagenet", build_imagefolder, 1000, 3, "image", 224,
                DATA_CFG["imagenet"]["mean"], DATA_CFG["imagenet"]["std"], 1281167, 50000, eval_split="val",
                tree=("train/", "    n01440764/  n01440764_10026.JPEG ...   (1000 class folders, 1,281,167 images)",
                      "    ...", "val/",
                      "    n01440764/  ILSVRC2012_val_00000293.JPEG ...  (1000 class folders, 50,000 images)",
                      "    ..."),
                prepare=("Get ILSVRC2012 from https://image-net.org, extract train/ and val/ with one folder per class",
                         "(the validation images must be sorted into class folders), then check the layout with",
                         "  {cmd}"),
                aliases=("imagenet1k", "imagenet-1k")),
]}
_ALIASES = {alias: spec.name for spec in DATASETS.values() for alias in spec.aliases}


# ----------------------------------------------------------------------------------------------------------
# reading the table

def canonical_name(name: str) -> str:
    """Map a dataset name (or a published alias like 'torch/cifar10') to its canonical name."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}.{hint} Valid datasets: {', '.join(DATASETS)}.")
    return key


def dataset_info(name: str) -> dict:
    """``dict(num_classes, in_channels, kind, img_size, mean, std, train_size, eval_size, name)`` of a dataset.

    Sizes are the official sample counts (CIFAR10-DVS: the published 9:1 split).
    """
    return DATASETS[canonical_name(name)].info()


def data_root(cfg) -> Path:
    """Resolved dataset folder: ``cfg.data_path`` or ``<repo>/data/<dataset>``."""
    return DATASETS[canonical_name(cfg.dataset)].root(cfg)


def expected_tree(name: str, root, T: int = 16) -> str:
    """The folder tree a dataset must have under ``root`` (a string for messages and docs)."""
    return DATASETS[canonical_name(name)].expected_tree(root, T)


def prepare_text(name: str, root, T: int = 16) -> str:
    """How to prepare a dataset in ``root`` (the lines of the error message after the folder tree)."""
    return DATASETS[canonical_name(name)].prepare_text(root, T)


def missing_data_error(name: str, root: Path, problem: str, T: int = 16) -> DatasetError:
    """``DatasetError``: the problem, the expected folder tree and how to prepare it (from the table)."""
    return DATASETS[canonical_name(name)].missing_error(root, problem, T)


def _label_count(ds) -> Optional[int]:
    base = ds.dataset if isinstance(ds, Subset) else ds
    classes = getattr(base, "classes", None)
    return len(classes) if classes else None


def check_num_classes(cfg, spec: DatasetSpec, eval_set) -> None:
    """``cfg.num_classes`` (if set) must cover every label of the data; raises ``DatasetError``."""
    n = cfg.num_classes
    if n is None or spec.name == "synthetic":  # synthetic draws its labels from num_classes
        return
    labels = _label_count(eval_set) or spec.num_classes
    if n < labels:
        raise DatasetError(f"num_classes={n} but {spec.name} has {labels} classes (labels 0..{labels - 1}): the "
                           f"model would have no output for the others. Remove num_classes (null = {labels}) "
                           f"or set it to at least {labels}.")


def create_datasets(cfg, include_train: bool = True) -> Splits:
    """Build ``(train_set, eval_set)`` for ``cfg.dataset`` (``train_set`` is None if ``include_train=False``).

    Image samples: normalised float ``[C, H, W]`` and an int label. Event samples: float event counts
    ``[T, 2, 128, 128]`` (``T = cfg.T``) and an int label. Raises ``DatasetError`` with the expected folder
    tree and the preparation command when the data are missing or incomplete, when ``cfg.num_classes`` is
    smaller than the dataset's number of classes, and (``verify_data: true``) when sample files are unreadable.
    """
    spec = DATASETS[canonical_name(cfg.dataset)]
    train_set, eval_set = spec.build(cfg, spec, include_train)
    check_num_classes(cfg, spec, eval_set)
    if cfg.verify_data:
        verify_files(train_set, eval_set, int(cfg.workers or 0))
    if spec.tree:  # datasets of files have official sizes (synthetic's are chosen, digits' fixed)
        warn_count(spec.name, spec.eval_split, len(eval_set), spec.eval_size)
        if train_set is not None:
            warn_count(spec.name, "train", len(train_set), spec.train_size)
    return train_set, eval_set


def check_data_config(cfg) -> None:
    """Config-level checks of the data keys that need the dataset (name, mean/std length); ``ConfigError``."""
    try:
        spec = DATASETS[canonical_name(cfg.dataset)]
    except DatasetError as err:
        raise ConfigError(f"config key 'dataset': {err}") from None
    for key in ("mean", "std"):
        value = getattr(cfg, key)
        if value is not None and len(value) != spec.in_channels:
            raise ConfigError(f"config key '{key}': {spec.name} has {spec.in_channels} input channels, got "
                              f"{len(value)} values {list(value)}; give {spec.in_channels} or null")
    std = cfg.std
    if std is not None and min(std) <= 0:
        raise ConfigError(f"config key 'std': every value must be > 0, got {list(std)}")
