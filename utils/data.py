"""Datasets, transforms and mixup for every task of the repo, behind one interface.

* ``DATA_DEFAULTS``: every data-related config key with its default (``None`` = the dataset's default).
* ``dataset_info(name)``: number of classes, input channels, kind ('image' | 'event'), native size.
* ``create_datasets(cfg) -> (train_set, eval_set)``: samples are ``(float image [C,H,W], int)`` for images
  (normalised) and ``(float event counts [T,2,H,W], int)`` for events (T = ``cfg.T`` frames).
* ``create_mixup(cfg, num_classes)``: mixup/cutmix callable (``SpatialMixup``) or ``None``.

A missing or incomplete dataset raises ``DatasetError`` with the expected folder tree and the command that
prepares it. ``synthetic`` is random CIFAR-shaped data held in memory (throughput measurements, no I/O).
Loaders are the libraries' own: sklearn digits, torchvision CIFAR and ImageFolder, spikingjelly
CIFAR10-DVS and DVS128 Gesture.
"""
import difflib
import math
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T_
from torchvision.datasets import CIFAR10, CIFAR100

from .augment import EventTrivialAugment, SpatialMixup, snn_rand_augment

REPO_ROOT = Path(__file__).resolve().parent.parent

DATA_DEFAULTS = {
    'dataset': 'digits',          # digits | synthetic | cifar10 | cifar100 | cifar10dvs | dvsgesture | imagenet
    'data_path': None,            # None -> <repo>/data/<dataset>
    'download': False,            # only CIFAR can be downloaded automatically (torchvision)
    'img_size': None,             # None -> native size (digits/CIFAR 32, events 128, ImageNet 224)
    'mean': None,                 # None -> dataset statistics
    'std': None,
    'crop_pct': None,             # eval Resize(img_size / crop_pct) + CenterCrop; None -> 1.0 (0.875 ImageNet 224)
    'interpolation': 'bicubic',   # eval resize
    'train_interpolation': 'bicubic',
    'scale': [0.08, 1.0],         # RandomResizedCrop area range; [1, 1] with ratio [1, 1] is the identity
    'ratio': [3. / 4., 4. / 3.],
    'hflip': 0.5,
    'color_jitter': 0.4,          # ImageNet only, and (as in timm) ignored when aa is set
    'aa': None,                   # e.g. 'rand-m9-n1-mstd0.4-inc1' (CIFAR: reduced op set), 'rand-m9-mstd0.5-inc1'
    'reprob': 0.0,                # random erasing probability (after normalisation)
    'remode': 'pixel',            # 'const' (published CIFAR) | 'pixel' (ImageNet) | 'rand'
    'recount': 1,
    'synthetic_size': [5000, 1000],  # synthetic only: [train, eval] samples (random CIFAR-shaped images)
    'digits_augment': False,      # digits only: light random affine (+-10 deg, +-10% shift, 0.9-1.1 scale)
    'event_augment': True,        # events only: hflip + EventTrivialAugment on training samples
    'T': 4,                       # model time steps; for event datasets also the number of frames
    'mixup': 0.0,                 # mixup alpha (0 = off)
    'cutmix': 0.0,                # cutmix alpha (0 = off)
    'cutmix_minmax': None,
    'mixup_prob': 1.0,
    'mixup_switch_prob': 0.5,
    'mixup_mode': 'batch',        # batch | pair | elem
    'mixup_off_epoch': 0,         # 0 = never; from this epoch on mixing stops (targets stay smoothed)
    'smoothing': 0.1,
    'workers': 4,
    'pin_memory': True,
}

_DATASETS = {
    'digits': dict(num_classes=10, in_channels=3, kind='image', img_size=32,
                   mean=(0.3053,) * 3, std=(0.3236,) * 3, train_size=1437, eval_size=360),
    'synthetic': dict(num_classes=10, in_channels=3, kind='image', img_size=32,
                      mean=None, std=None, train_size=5000, eval_size=1000),
    'cifar10': dict(num_classes=10, in_channels=3, kind='image', img_size=32,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), train_size=50000, eval_size=10000),
    'cifar100': dict(num_classes=100, in_channels=3, kind='image', img_size=32,
                     mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), train_size=50000, eval_size=10000),
    'cifar10dvs': dict(num_classes=10, in_channels=2, kind='event', img_size=128,
                       mean=None, std=None, train_size=9000, eval_size=1000),
    'dvsgesture': dict(num_classes=11, in_channels=2, kind='event', img_size=128,
                       mean=None, std=None, train_size=1176, eval_size=288),
    'imagenet': dict(num_classes=1000, in_channels=3, kind='image', img_size=224,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), train_size=1281167, eval_size=50000),
}
_ALIASES = {'torch/cifar10': 'cifar10', 'torch/cifar100': 'cifar100', 'cifar10-dvs': 'cifar10dvs',
            'dvs128gesture': 'dvsgesture', 'dvs128': 'dvsgesture', 'dvs_gesture': 'dvsgesture',
            'imagenet1k': 'imagenet', 'imagenet-1k': 'imagenet'}

CIFAR10DVS_TRAIN_RATIO = 0.9
CIFAR10DVS_URL = 'https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671'
GESTURE_URL = 'https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794'
GESTURE_FILES = ('DvsGesture.tar.gz', 'gesture_mapping.csv', 'LICENSE.txt', 'README.txt')  # spikingjelly checks all


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or misconfigured; the message says what to do."""


def canonical_name(name: str) -> str:
    """Map a dataset name (or a published alias like 'torch/cifar10') to its canonical name."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        close = difflib.get_close_matches(key, list(_DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
        raise DatasetError(f"unknown dataset {name!r}.{hint} Valid datasets: {', '.join(_DATASETS)}.")
    return key


def dataset_info(name: str) -> dict:
    """``dict(num_classes, in_channels, kind, img_size, mean, std, train_size, eval_size)`` of a dataset.

    Sizes are the official sample counts (CIFAR10-DVS: the published 9:1 split).
    """
    return dict(_DATASETS[canonical_name(name)], name=canonical_name(name))


def _get(cfg, key):
    return getattr(cfg, key, DATA_DEFAULTS[key]) if cfg is not None else DATA_DEFAULTS[key]


def data_root(cfg) -> Path:
    """Resolved dataset folder: ``cfg.data_path`` or ``<repo>/data/<dataset>``."""
    path = _get(cfg, 'data_path')
    if path in (None, ''):
        return REPO_ROOT / 'data' / canonical_name(_get(cfg, 'dataset'))
    return Path(os.path.expanduser(str(path))).resolve()


def _prepare_cmd(name: str, root: Path, T: Optional[int] = None, download: bool = False) -> str:
    cmd = f'python -m utils.prepare_data --dataset {name} --root {root}'
    if T is not None:
        cmd += f' --T {T}'
    if download:
        cmd += ' --download'
    return cmd


# ----------------------------------------------------------------------------------------------------------
# expected layouts (shown in errors and in the README)

def expected_tree(name: str, root, T: int = 16) -> str:
    """The folder tree a dataset must have under ``root`` (a string for messages and docs)."""
    name = canonical_name(name)
    frames = f'frames_number_{T}_split_by_number'
    trees = {
        'cifar10': ['cifar-10-batches-py/',
                    '    batches.meta',
                    '    data_batch_1 ... data_batch_5',
                    '    test_batch'],
        'cifar100': ['cifar-100-python/',
                     '    meta',
                     '    train',
                     '    test'],
        'cifar10dvs': [f'{frames}/            <- frames used for training (T={T}), made by prepare_data',
                       '    airplane/  cifar10_airplane_0.npz ... (1000 files, key "frames": [T,2,128,128])',
                       '    automobile/ bird/ cat/ deer/ dog/ frog/ horse/ ship/ truck/',
                       'download/  airplane.zip ... truck.zip   <- raw recordings (or --download)',
                       'extract/, events_np/                   <- intermediate files of spikingjelly'],
        'dvsgesture': [f'{frames}/            <- frames used for training (T={T}), made by prepare_data',
                       '    train/0/ ... train/10/   (1176 files, key "frames": [T,2,128,128])',
                       '    test/0/  ... test/10/    (288 files)',
                       'download/  DvsGesture.tar.gz gesture_mapping.csv LICENSE.txt README.txt  <- manual download',
                       'extract/, events_np/        <- intermediate files of spikingjelly'],
        'imagenet': ['train/',
                     '    n01440764/  n01440764_10026.JPEG ...   (1000 class folders, 1,281,167 images)',
                     '    ...',
                     'val/',
                     '    n01440764/  ILSVRC2012_val_00000293.JPEG ...  (1000 class folders, 50,000 images)',
                     '    ...'],
    }
    if name not in trees:
        where = 'generated in memory' if name == 'synthetic' else 'bundled with scikit-learn'
        return f'{root}  (nothing: {name} is {where})'
    return '\n'.join([f'{root}/'] + ['  ' + line for line in trees[name]])


def _missing_error(name: str, root: Path, problem: str, T: int = 16) -> DatasetError:
    name = canonical_name(name)
    lines = [f'{name}: {problem}', '', 'Expected layout:', expected_tree(name, root, T), '']
    if name in ('cifar10', 'cifar100'):
        lines += ['Prepare it with (downloads ~170 MB):',
                  '  ' + _prepare_cmd(name, root, download=True),
                  'or set the config key download: true for train.py, or point data_path (--data-path) at the',
                  f'folder that contains {"cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"}/.']
    elif name == 'cifar10dvs':
        lines += ['Prepare it with (downloads the recordings from figshare and converts them to frames):',
                  '  ' + _prepare_cmd(name, root, T, download=True),
                  'or put the 10 class zips in download/ and drop --download.']
    elif name == 'dvsgesture':
        lines += ['DVS128 Gesture cannot be downloaded automatically (IBM licence). Download the four files',
                  f'{", ".join(GESTURE_FILES)} from',
                  f'  {GESTURE_URL}',
                  f'into {root / "download"}, then run',
                  '  ' + _prepare_cmd(name, root, T)]
    elif name == 'imagenet':
        lines += ['Get ILSVRC2012 from https://image-net.org, extract train/ and val/ with one folder per class',
                  '(the validation images must be sorted into class folders), then check the layout with',
                  '  ' + _prepare_cmd(name, root)]
    return DatasetError('\n'.join(lines))


def _warn_count(name: str, split: str, got: int, expected: int):
    if got != expected:
        warnings.warn(f'{name} {split} split has {got} samples, the official one has {expected} '
                      f'(fine for a subset, but results are not comparable with the paper)', stacklevel=3)


# ----------------------------------------------------------------------------------------------------------
# digits (bundled)

class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits, bilinearly upsampled to ``img_size`` and replicated to 3 channels.

    Fixed stratified 80/20 split (``train_test_split(..., stratify=labels, random_state=0)``: 1437 / 360).
    The 17 grey levels (0-16) are scaled to [0, 1], then normalised with the train-split statistics.
    3 channels so that every CIFAR model runs on it unchanged.
    """

    SPLIT_SEED = 0

    def __init__(self, train: bool, img_size: int = 32, mean=None, std=None, augment: bool = False):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        labels = digits.target.astype(np.int64)
        train_idx, eval_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                               random_state=self.SPLIT_SEED)
        idx = np.sort(train_idx if train else eval_idx)
        images = torch.tensor(digits.images[idx], dtype=torch.float32).unsqueeze(1) / 16.0
        self.images = F.interpolate(images, size=(img_size, img_size), mode='bilinear',
                                    align_corners=False).clamp_(0.0, 1.0)
        self.targets = labels[idx].tolist()
        self.indices = idx
        info = _DATASETS['digits']
        self.normalize = T_.Normalize(mean or info['mean'], std or info['std'])
        self.augment = T_.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)) if augment else None
        # without augmentation a sample is pure indexing: normalised once here (the same elementwise maths)
        self.normalized = None if augment else self.normalize(self.images.expand(-1, 3, -1, -1)).contiguous()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        if self.normalized is not None:
            return self.normalized[index], self.targets[index]
        return self.normalize(self.augment(self.images[index].expand(3, -1, -1))), self.targets[index]


# ----------------------------------------------------------------------------------------------------------
# synthetic (no disk access)

class SyntheticDataset(Dataset):
    """Random CIFAR-shaped images for measuring the training loop without I/O (``dataset: synthetic``).

    ``n`` images ``[C, img_size, img_size]`` drawn once from a fixed generator (standard normal at the
    native 32x32, i.e. already normalised, then bilinearly resized to ``img_size``) and held as one
    tensor, with uniformly random labels in ``[0, num_classes)``. Nothing to learn: for throughput
    (``train.py`` img/s against ``benchmark.py``) and smoke tests only. ``seed`` 0 = train, 1 = eval.
    """

    NATIVE = 32
    PRECOMPUTE_BYTES = 1 << 28  # resized copies up to 256 MiB are made once, larger ones per sample

    def __init__(self, n: int, img_size: int = 32, num_classes: int = 10, in_channels: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, in_channels, self.NATIVE, self.NATIVE, generator=g)
        self.targets = torch.randint(0, num_classes, (n,), generator=g).tolist()
        self.img_size = img_size
        if img_size != self.NATIVE and n * in_channels * img_size ** 2 * 4 <= self.PRECOMPUTE_BYTES:
            self.images = self._resize(self.images)
        self.resize_per_sample = self.images.shape[-1] != img_size

    def _resize(self, x):
        return F.interpolate(x, size=(self.img_size, self.img_size), mode='bilinear', align_corners=False)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img = self.images[index]
        if self.resize_per_sample:
            img = self._resize(img[None])[0]
        return img, self.targets[index]


def _create_synthetic(cfg, include_train):
    sizes = [int(v) for v in _get(cfg, 'synthetic_size')]
    if len(sizes) != 2 or min(sizes) < 1:
        raise DatasetError(f'synthetic_size must be [train_samples, eval_samples] with both >= 1, got {sizes}')
    info = _DATASETS['synthetic']
    size = _get(cfg, 'img_size') or info['img_size']
    classes = getattr(cfg, 'num_classes', None) or info['num_classes']
    train = SyntheticDataset(sizes[0], size, classes, seed=0) if include_train else None
    return train, SyntheticDataset(sizes[1], size, classes, seed=1)


# ----------------------------------------------------------------------------------------------------------
# CIFAR (torchvision)

def _without_md5(files):
    return [[name, None] for name, _ in files]


class CIFAR10Files(CIFAR10):
    """torchvision's CIFAR-10 reader; integrity = files present (``prepare_data --verify`` checks the official
    md5 sums), so that subsets written in the same format load too."""
    train_list = _without_md5(CIFAR10.train_list)
    test_list = _without_md5(CIFAR10.test_list)
    meta = dict(CIFAR10.meta, md5=None)


class CIFAR100Files(CIFAR100):
    """torchvision's CIFAR-100 reader; integrity = files present (see ``CIFAR10Files``)."""
    train_list = _without_md5(CIFAR100.train_list)
    test_list = _without_md5(CIFAR100.test_list)
    meta = dict(CIFAR100.meta, md5=None)


_CIFAR_CLASSES = {'cifar10': CIFAR10Files, 'cifar100': CIFAR100Files}


def _cifar_transforms(cfg, info):
    from timm.data import create_transform

    img_size = _get(cfg, 'img_size') or info['img_size']
    mean, std = tuple(_get(cfg, 'mean') or info['mean']), tuple(_get(cfg, 'std') or info['std'])
    primary, _, final = create_transform(
        img_size, is_training=True, separate=True, scale=tuple(_get(cfg, 'scale')), ratio=tuple(_get(cfg, 'ratio')),
        hflip=_get(cfg, 'hflip'), color_jitter=None, interpolation=_get(cfg, 'train_interpolation'),
        mean=mean, std=std, re_prob=_get(cfg, 'reprob'), re_mode=_get(cfg, 'remode'), re_count=_get(cfg, 'recount'))
    aa = _get(cfg, 'aa')
    secondary = [snn_rand_augment(aa, img_size, mean, _get(cfg, 'train_interpolation'))] if aa else []
    train_tf = T_.Compose(list(primary.transforms) + secondary + list(final.transforms))
    eval_tf = create_transform(img_size, is_training=False, interpolation=_get(cfg, 'interpolation'),
                               crop_pct=_get(cfg, 'crop_pct') or 1.0, mean=mean, std=std)
    return train_tf, eval_tf


def _create_cifar(cfg, name, include_train):
    import pickle

    info = _DATASETS[name]
    root = data_root(cfg)
    cls = _CIFAR_CLASSES[name]
    if _get(cfg, 'download'):
        try:
            cls(str(root), train=False, download=True)
        except Exception as e:  # network or disk problem
            raise _missing_error(name, root, f'download into {root} failed ({type(e).__name__}: {e})') from None
    folder = root / cls.base_folder
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta['filename']]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        what = 'not found' if len(missing) == len(needed) else 'incomplete, missing ' + ', '.join(missing)
        raise _missing_error(name, root, f'{what} in {folder}')
    train_tf, eval_tf = _cifar_transforms(cfg, info)
    try:
        eval_set = cls(str(root), train=False, transform=eval_tf)
        train_set = cls(str(root), train=True, transform=train_tf) if include_train else None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError) as e:
        raise _missing_error(name, root, f'files in {folder} are unreadable ({type(e).__name__}: {e}); '
                                         f'delete the folder and download again') from None
    _warn_count(name, 'test', len(eval_set), info['eval_size'])
    if train_set is not None:
        _warn_count(name, 'train', len(train_set), info['train_size'])
    return train_set, eval_set


# ----------------------------------------------------------------------------------------------------------
# event datasets (spikingjelly frames)

class EventFrames:
    """Numpy frames [T,2,H,W] of event counts -> float tensor, optionally augmented (training)."""

    def __init__(self, augment: bool, hflip: float = 0.5):
        self.flip = T_.RandomHorizontalFlip(hflip) if augment and hflip > 0 else None
        self.augment = EventTrivialAugment() if augment else None

    def __call__(self, frames):
        x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
        if self.flip is not None:
            x = self.flip(x)
        if self.augment is not None:
            x = self.augment(x)
        return x

    def __repr__(self):
        return f'EventFrames(flip={self.flip}, augment={self.augment})'


def _frames_dir(root: Path, T: int) -> Path:
    return root / f'frames_number_{T}_split_by_number'


_FRAME_CLASSES = {'cifar10dvs': 'CIFAR10DVSFrames', 'dvsgesture': 'DVS128GestureFrames'}


def _make_frames_class(class_name: str):
    """spikingjelly's dataset class, reading already-integrated frames without touching the raw data.

    spikingjelly's ``prepare_raw_dataset`` would start a download (CIFAR10-DVS) or fail (Gesture) when the
    intermediate ``events_np/`` folder is absent, even if the frames exist. Frame integration is done
    explicitly by ``python -m utils.prepare_data``, so loading never starts a download or a conversion.
    """
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    base = {'CIFAR10DVSFrames': CIFAR10DVS, 'DVS128GestureFrames': DVS128Gesture}[class_name]
    cls = type(class_name, (base,), {'prepare_raw_dataset': lambda self: None, '__module__': __name__,
                                     '__doc__': _make_frames_class.__doc__})
    globals()[class_name] = cls
    return cls


def __getattr__(attr):
    # Lazy module attributes (PEP 562): importing spikingjelly.datasets costs seconds, so the frame classes are
    # created on first use; defined here so that DataLoader workers can pickle them by name.
    if attr in _FRAME_CLASSES.values():
        return _make_frames_class(attr)
    raise AttributeError(f'module {__name__!r} has no attribute {attr!r}')


def _check_frames(name: str, root: Path, T: int):
    frames = _frames_dir(root, T)
    marker = frames.with_name(frames.name + '.building')
    if marker.exists():
        raise _missing_error(name, root, f'frame conversion into {frames} did not finish (found {marker.name}). '
                                         f'Delete {frames} and {marker}, then rerun the command below.', T)
    if not frames.is_dir():
        other = sorted(p.name for p in root.glob('frames_number_*_split_by_number')) if root.is_dir() else []
        hint = f' (found {", ".join(other)}: frames for another T; T={T} is requested)' if other else ''
        raise _missing_error(name, root, f'no frames for T={T} in {root}{hint}', T)
    if name == 'cifar10dvs':
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES
        expected = [frames / c for c in CIFAR10DVS_CLASS_NAMES]
    else:
        expected = [frames / split / str(c) for split in ('train', 'test') for c in range(11)]
    missing = [str(p.relative_to(root)) for p in expected if not p.is_dir() or not any(p.glob('*.np[yz]'))]
    if missing:
        raise _missing_error(name, root, f'frames incomplete: empty or missing class folders {", ".join(missing)}', T)


def split_per_class(targets: Sequence[int], train_ratio: float = CIFAR10DVS_TRAIN_RATIO):
    """Published CIFAR10-DVS split: per class, the first ceil(ratio * n) samples in dataset order -> train.

    Deterministic (no shuffling). Returns (train_indices, test_indices) in dataset order.
    """
    by_class = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train_idx, test_idx = [], []
    for c in sorted(by_class):
        idx = by_class[c]
        cut = math.ceil(len(idx) * train_ratio)
        train_idx += idx[:cut]
        test_idx += idx[cut:]
    return sorted(train_idx), sorted(test_idx)


def _create_events(cfg, name, include_train):
    info = _DATASETS[name]
    root = data_root(cfg)
    T = int(_get(cfg, 'T'))
    img_size = _get(cfg, 'img_size')
    if img_size not in (None, info['img_size']):
        raise DatasetError(f'{name}: img_size={img_size} is not supported; event frames are used at their native '
                           f'{info["img_size"]}x{info["img_size"]} (set img_size to null or {info["img_size"]})')
    if _get(cfg, 'download'):
        raise DatasetError(f'{name}: download=true is not supported inside training (conversion takes long and '
                           f'must not run once per process). Run once:\n  '
                           + _prepare_cmd(name, root, T, download=name == 'cifar10dvs'))
    _check_frames(name, root, T)
    cls = globals().get(_FRAME_CLASSES[name]) or _make_frames_class(_FRAME_CLASSES[name])
    augment = bool(_get(cfg, 'event_augment'))
    train_tf, eval_tf = EventFrames(augment, _get(cfg, 'hflip')), EventFrames(False)
    kw = dict(data_type='frame', frames_number=T, split_by='number')
    try:
        if name == 'cifar10dvs':
            eval_full = cls(str(root), transform=eval_tf, **kw)
            train_idx, test_idx = split_per_class(eval_full.targets)
            eval_set = Subset(eval_full, test_idx)
            train_set = Subset(cls(str(root), transform=train_tf, **kw), train_idx) if include_train else None
        else:
            eval_set = cls(str(root), train=False, transform=eval_tf, **kw)
            train_set = cls(str(root), train=True, transform=train_tf, **kw) if include_train else None
    except (FileNotFoundError, RuntimeError) as e:
        raise _missing_error(name, root, f'spikingjelly could not read the frames ({e})', T) from None
    _warn_count(name, 'test', len(eval_set), info['eval_size'])
    if train_set is not None:
        _warn_count(name, 'train', len(train_set), info['train_size'])
    return train_set, eval_set


# ----------------------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)

def _imagenet_transforms(cfg, info):
    from timm.data import create_transform

    img_size = _get(cfg, 'img_size') or info['img_size']
    mean, std = tuple(_get(cfg, 'mean') or info['mean']), tuple(_get(cfg, 'std') or info['std'])
    crop_pct = _get(cfg, 'crop_pct') or (0.875 if img_size <= 224 else 1.0)
    train_tf = create_transform(
        img_size, is_training=True, scale=tuple(_get(cfg, 'scale')), ratio=tuple(_get(cfg, 'ratio')),
        hflip=_get(cfg, 'hflip'), color_jitter=_get(cfg, 'color_jitter'), auto_augment=_get(cfg, 'aa'),
        interpolation=_get(cfg, 'train_interpolation'), mean=mean, std=std, re_prob=_get(cfg, 'reprob'),
        re_mode=_get(cfg, 'remode'), re_count=_get(cfg, 'recount'))
    eval_tf = create_transform(img_size, is_training=False, interpolation=_get(cfg, 'interpolation'),
                               crop_pct=crop_pct, mean=mean, std=std)
    return train_tf, eval_tf


def _create_imagenet(cfg, include_train):
    from torchvision.datasets import ImageFolder

    info = _DATASETS['imagenet']
    root = data_root(cfg)
    splits = ['train', 'val'] if include_train else ['val']
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise _missing_error('imagenet', root, f'missing {" and ".join(s + "/" for s in missing)} in {root}')
    train_tf, eval_tf = _imagenet_transforms(cfg, info)
    sets = {}
    for split, tf in zip(('train', 'val'), (train_tf, eval_tf)):
        if split not in splits:
            continue
        try:
            sets[split] = ImageFolder(str(root / split), transform=tf)
        except FileNotFoundError as e:
            raise _missing_error('imagenet', root, f'{root / split} has no class folders with images ({e})') from None
    if include_train and sets['train'].classes != sets['val'].classes:
        only = sorted(set(sets['train'].classes) ^ set(sets['val'].classes))
        raise _missing_error('imagenet', root, f'train/ and val/ have different class folders '
                                               f'(e.g. {", ".join(only[:5])})')
    _warn_count('imagenet', 'val', len(sets['val']), info['eval_size'])
    if include_train:
        _warn_count('imagenet', 'train', len(sets['train']), info['train_size'])
    return sets.get('train'), sets['val']


# ----------------------------------------------------------------------------------------------------------
# public entry points

def create_datasets(cfg, include_train: bool = True):
    """Build ``(train_set, eval_set)`` for ``cfg.dataset`` (``train_set`` is None if ``include_train=False``).

    Image samples: normalised float ``[C, H, W]`` and an int label. Event samples: float event counts
    ``[T, 2, 128, 128]`` (``T = cfg.T``) and an int label. Raises ``DatasetError`` with the expected folder
    tree and the preparation command when the data are missing or incomplete.
    """
    name = canonical_name(_get(cfg, 'dataset'))
    if name == 'digits':
        info = _DATASETS['digits']
        size = _get(cfg, 'img_size') or info['img_size']
        mean, std = _get(cfg, 'mean'), _get(cfg, 'std')
        train = DigitsDataset(True, size, mean, std, augment=bool(_get(cfg, 'digits_augment'))) \
            if include_train else None
        return train, DigitsDataset(False, size, mean, std)
    if name == 'synthetic':
        return _create_synthetic(cfg, include_train)
    if name in ('cifar10', 'cifar100'):
        return _create_cifar(cfg, name, include_train)
    if name in ('cifar10dvs', 'dvsgesture'):
        return _create_events(cfg, name, include_train)
    return _create_imagenet(cfg, include_train)


def mixup_active(cfg) -> bool:
    return _get(cfg, 'mixup') > 0 or _get(cfg, 'cutmix') > 0 or _get(cfg, 'cutmix_minmax') is not None


def create_mixup(cfg, num_classes: int):
    """Mixup/CutMix with label smoothing for image ``[B,C,H,W]`` or event ``[B,T,C,H,W]`` batches, or None.

    Returns a ``SpatialMixup`` (a timm ``Mixup`` whose CutMix box is always over H, W: correct for 5-D event
    batches, identical to timm on images). Call ``fn(x, y) -> (x_mixed, soft_targets)``; after
    ``mixup_off_epoch`` set ``fn.mixup_enabled = False`` (targets stay label-smoothed). None when both alphas
    are 0: use label-smoothing cross-entropy then.
    """
    if not mixup_active(cfg):
        return None
    mode = _get(cfg, 'mixup_mode')
    if mode not in ('batch', 'pair', 'elem'):
        raise DatasetError(f"mixup_mode={mode!r} is not valid; use 'batch', 'pair' or 'elem'")
    minmax = _get(cfg, 'cutmix_minmax')
    return SpatialMixup(
        mixup_alpha=float(_get(cfg, 'mixup')), cutmix_alpha=float(_get(cfg, 'cutmix')),
        cutmix_minmax=tuple(minmax) if minmax is not None else None, prob=float(_get(cfg, 'mixup_prob')),
        switch_prob=float(_get(cfg, 'mixup_switch_prob')), mode=mode,
        label_smoothing=float(_get(cfg, 'smoothing')), num_classes=int(num_classes))
