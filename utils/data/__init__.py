"""Datasets, transforms and mixup for every task of the repo, behind one table.

* :data:`DATASETS` (``table.py``): one :class:`DatasetSpec` (``spec.py``) per dataset: builder, classes,
  channels, native size, normalisation, official sizes, expected folder tree, how to prepare it. A new
  dataset is one entry there plus its builder; docs/data.md shows how.
* Builders, one module per family: ``digits.py`` (sklearn digits), ``synthetic.py`` (random CIFAR-shaped
  data in memory, no I/O), ``cifar.py`` (torchvision CIFAR), ``imagefolder.py`` (ImageNet-style class
  folders), ``events.py`` (spikingjelly CIFAR10-DVS and DVS128 Gesture frames).
* ``transforms.py``: image and event-frame transforms; ``mixup.py``: ``create_mixup(cfg, num_classes)``.
* ``files.py``: the errors, reading checks of sample files and the safe CIFAR unpickler.
* ``options.py``: :data:`DATA_OPTIONS`, every data config key with its type, range and help (read by
  ``utils.config``). The builders take a ``cfg`` holding every one of them (read as ``cfg.key``; outside a run
  config: ``argparse.Namespace(**{**DATA_DEFAULTS, ...})``).

Entry points: ``create_datasets(cfg) -> (train_set, eval_set)`` (samples ``(float image [C,H,W], int)`` for
images, normalised, and ``(float event counts [T,2,H,W], int)`` for events, T = ``cfg.T`` frames) and
``dataset_info(name)`` (number of classes, input channels, kind 'image' | 'event', native size, ...).

Errors. A missing or incomplete dataset raises ``DatasetError`` with the expected folder tree and the command
that prepares it. A sample file that cannot be read raises ``BadSampleError`` (a ``DatasetError``) naming the
file, when it is read: nothing is skipped silently. ``verify_data: true`` reads every sample file once at
start and lists all unreadable ones. CIFAR batch files (pickles) are read by an unpickler that admits only
what the format holds, so a crafted file cannot run code.
"""
from .cifar import CIFAR10Files, CIFAR100Files, build_cifar
from .digits import DigitsDataset, build_digits
from .events import (CIFAR10DVS_TRAIN_RATIO, CIFAR10DVS_URL, GESTURE_FILES, GESTURE_URL, build_events, frames_dir,
                     split_per_class)
from .files import (BadSampleError, CifarUnpickler, DatasetError, NamedSampleErrors, find_unreadable, read_cifar_batch,
                    verify_files)
from .imagefolder import CheckedImageFolder, build_imagefolder
from .mixup import create_mixup, mixup_active
from .options import DATA_DEFAULTS, DATA_OPTIONS
from .spec import REPO_ROOT, DatasetSpec, Splits, prepare_cmd
from .synthetic import SyntheticDataset, build_synthetic
from .table import _ALIASES as _ALIASES  # the alias map itself (tests add to it)
from .table import (DATASETS, canonical_name, check_data_config, check_num_classes, create_datasets,
                    data_root, dataset_info, expected_tree, missing_data_error, prepare_text)
from .transforms import EventFrames, cifar_transforms, imagenet_transforms

__all__ = ["DATASETS", "DatasetSpec", "Splits", "DATA_OPTIONS", "DATA_DEFAULTS", "REPO_ROOT",
           "create_datasets", "dataset_info", "canonical_name", "data_root", "expected_tree", "prepare_text",
           "prepare_cmd", "missing_data_error", "check_data_config", "check_num_classes", "DatasetError",
           "BadSampleError", "NamedSampleErrors", "CifarUnpickler", "read_cifar_batch", "find_unreadable",
           "verify_files", "create_mixup", "mixup_active", "cifar_transforms", "imagenet_transforms", "EventFrames",
           "DigitsDataset", "SyntheticDataset", "CIFAR10Files", "CIFAR100Files", "CheckedImageFolder",
           "split_per_class", "frames_dir", "CIFAR10DVS_TRAIN_RATIO", "CIFAR10DVS_URL", "GESTURE_URL",
           "GESTURE_FILES", "build_digits", "build_synthetic", "build_cifar", "build_imagefolder", "build_events"]
