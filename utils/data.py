"""Datasets, transforms and mixup for every task of the repo, behind one table.

* :data:`DATASETS`: one :class:`DatasetSpec` per dataset (loader, classes, channels, native size,
  normalisation, official sizes, expected folder tree, how to prepare it). A new dataset is one entry
  there plus its loader function; docs/data.md shows how.
* :data:`DATA_OPTIONS`: every data config key with its type, range and help (read by ``utils.config``).
* ``dataset_info(name)``: number of classes, input channels, kind ('image' | 'event'), native size, ...
* ``create_datasets(cfg) -> (train_set, eval_set)``: samples are ``(float image [C,H,W], int)`` for images
  (normalised) and ``(float event counts [T,2,H,W], int)`` for events (T = ``cfg.T`` frames).
* ``create_mixup(cfg, num_classes)``: mixup/cutmix callable (``SpatialMixup``) or ``None``.

Errors. A missing or incomplete dataset raises ``DatasetError`` with the expected folder tree and the command
that prepares it. A sample file that cannot be read raises ``BadSampleError`` (a ``DatasetError``) naming the
file, when it is read: nothing is skipped silently. ``verify_data: true`` reads every sample file once at
start and lists all unreadable ones. CIFAR batch files (pickles) are read by an unpickler that admits only
what the format holds, so a crafted file cannot run code.

Loaders are the libraries' own: sklearn digits, torchvision CIFAR and ImageFolder, spikingjelly
CIFAR10-DVS and DVS128 Gesture. ``synthetic`` is random CIFAR-shaped data held in memory (throughput
measurements, no I/O).
"""
import dataclasses
import difflib
import math
import os
import pickle
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T_
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder, VisionDataset

from models.common import DATA_CFG  # owner of the CIFAR-10 / ImageNet normalisation statistics

from .augment import EventTrivialAugment, SpatialMixup, snn_rand_augment
from .config import ConfigError, Option

REPO_ROOT = Path(__file__).resolve().parent.parent

_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')

# Every data key of a config (YAML key and --flag). ``None`` defaults mean "the dataset's own value".
DATA_OPTIONS: Dict[str, Option] = {
    'dataset': Option('digits', str, 'dataset name or alias: digits | synthetic | cifar10 | cifar100 | cifar10dvs | '
                      'dvsgesture | imagenet (see docs/data.md)'),
    'data_path': Option(None, str, 'dataset folder (null = <repo>/data/<dataset>); in a YAML file relative to '
                        "that file's folder, on the command line relative to the current folder"),
    'download': Option(False, bool, 'download the dataset if missing (CIFAR-10/100 only, via torchvision)'),
    'verify_data': Option(False, bool, 'read every sample file once at start and list all unreadable ones '
                          '(ImageNet / event frames; costs one pass over the files)'),
    'img_size': Option(None, int, 'input size (null = native: digits/CIFAR 32, events 128, ImageNet 224)', low=1),
    'mean': Option(None, list, "normalisation mean per channel, e.g. [0.5, 0.5, 0.5] (null = the dataset's)"),
    'std': Option(None, list, "normalisation std per channel, each > 0 (null = the dataset's)"),
    'crop_pct': Option(None, float, 'eval Resize(img_size / crop_pct) + CenterCrop (null = 1.0; ImageNet at '
                       '<= 224: 0.875)', low=1e-6, high=1.0),
    'interpolation': Option('bicubic', str, 'eval resize interpolation', choices=_INTERPOLATIONS),
    'train_interpolation': Option('bicubic', str, "train crop interpolation ('random' = bilinear or bicubic)",
                                  choices=_INTERPOLATIONS + ('random',)),
    'scale': Option([0.08, 1.0], list, 'RandomResizedCrop area range [min, max]; [1, 1] with ratio [1, 1] is the '
                    'identity', low=0.0, length=2),
    'ratio': Option([3. / 4., 4. / 3.], list, 'RandomResizedCrop aspect-ratio range [min, max]', low=1e-6, length=2),
    'hflip': Option(0.5, float, 'horizontal-flip probability (images and event frames)', low=0.0, high=1.0),
    'color_jitter': Option(0.4, float, 'colour jitter strength (ImageNet only; ignored when aa is set, as in timm)',
                           low=0.0),
    'aa': Option(None, str, "RandAugment policy, e.g. 'rand-m9-n1-mstd0.4-inc1' (CIFAR: reduced op set) or "
                 "'rand-m9-mstd0.5-inc1' (null = off)"),
    'reprob': Option(0.0, float, 'random-erasing probability (after normalisation)', low=0.0, high=1.0),
    'remode': Option('pixel', str, "random-erasing fill: 'const' (published CIFAR) | 'pixel' (ImageNet) | 'rand'",
                     choices=('const', 'pixel', 'rand')),
    'recount': Option(1, int, 'random-erasing boxes per image', low=1),
    'synthetic_size': Option([5000, 1000], list, 'synthetic only: [train, eval] number of random samples',
                             low=1, length=2),
    'digits_augment': Option(False, bool, 'digits only: light random affine (+-10 deg, +-10% shift, 0.9-1.1 scale)'),
    'event_augment': Option(True, bool, 'events only: hflip + EventTrivialAugment on training samples'),
    'T': Option(4, int, 'model time steps; for event datasets also the number of frames', low=1),
    'mixup': Option(0.0, float, 'mixup alpha (0 = off)', low=0.0),
    'cutmix': Option(0.0, float, 'cutmix alpha (0 = off)', low=0.0),
    'cutmix_minmax': Option(None, list, 'cutmix box area range [min, max] as fractions (null = from cutmix alpha)',
                            low=0.0, high=1.0, length=2),
    'mixup_prob': Option(1.0, float, 'probability of mixing a batch', low=0.0, high=1.0),
    'mixup_switch_prob': Option(0.5, float, 'probability of cutmix instead of mixup when both are on',
                                low=0.0, high=1.0),
    'mixup_mode': Option('batch', str, 'mix per batch, pair or element', choices=('batch', 'pair', 'elem')),
    'mixup_off_epoch': Option(0, int, 'turn mixup/cutmix off from this epoch (targets stay smoothed); 0 = never',
                              low=0),
    'smoothing': Option(0.1, float, 'label smoothing of the targets (0 = one-hot)', low=0.0, high=0.999),
    'workers': Option(None, int, 'DataLoader worker processes per training process (0 = load in the main process; '
                      'null = auto: the CPU cores per process on CUDA, at most 4 on CPU)', low=0),
    'pin_memory': Option(True, bool, 'page-locked batches for faster host-to-GPU copies'),
}
DATA_DEFAULTS = {k: o.default for k, o in DATA_OPTIONS.items()}

CIFAR10DVS_TRAIN_RATIO = 0.9
CIFAR10DVS_URL = 'https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671'
GESTURE_URL = 'https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794'
GESTURE_FILES = ('DvsGesture.tar.gz', 'gesture_mapping.csv', 'LICENSE.txt', 'README.txt')  # spikingjelly checks all


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or misconfigured; the message says what to do."""


class BadSampleError(DatasetError):
    """One sample file cannot be read. ``.path`` is the file, ``.index`` its index in the dataset.

    Raised when the sample is loaded (also from DataLoader workers: the re-raised copy recovers ``.path`` and
    ``.index`` from the message), so a training loop can save its state and stop naming the file.
    """

    _PATTERN = re.compile(r'cannot read sample file (.+) \(index (\d+)\)')

    def __init__(self, message: str, path: Optional[str] = None, index: Optional[int] = None):
        match = self._PATTERN.search(message)
        if path is None and match:  # rebuilt from a worker's traceback text: keep our message, drop the rest
            path, index = match.group(1), int(match.group(2))
            message = message[match.start():].split('\n\n')[0].rstrip()
        super().__init__(message)
        self.path, self.index = path, index

    @classmethod
    def from_error(cls, path, index: int, err: BaseException) -> 'BadSampleError':
        return cls(f'cannot read sample file {path} (index {index})\n'
                   f'  reason: {type(err).__name__}: {err}\n'
                   f'  fix: replace it with a good copy, or delete it (the dataset then has one sample less); '
                   f'--verify-data true lists every unreadable file at start', path=str(path), index=index)


def get_option(cfg, key):
    """``cfg.<key>``, or the key's default when ``cfg`` lacks it (loaders accept any namespace)."""
    return getattr(cfg, key, DATA_DEFAULTS[key]) if cfg is not None else DATA_DEFAULTS[key]


def data_root(cfg) -> Path:
    """Resolved dataset folder: ``cfg.data_path`` or ``<repo>/data/<dataset>``."""
    path = get_option(cfg, 'data_path')
    if path in (None, ''):
        return REPO_ROOT / 'data' / canonical_name(get_option(cfg, 'dataset'))
    return Path(os.path.expanduser(str(path))).resolve()


def _prepare_cmd(name: str, root: Path, T: Optional[int] = None, download: bool = False) -> str:
    cmd = f'python -m utils.prepare_data --dataset {name} --root {root}'
    if T is not None:
        cmd += f' --T {T}'
    if download:
        cmd += ' --download'
    return cmd


def _warn_count(name: str, split: str, got: int, expected: int):
    if got != expected:
        warnings.warn(f'{name} {split} split has {got} samples, the official one has {expected} '
                      f'(fine for a subset, but results are not comparable with the paper)', stacklevel=3)


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
        info = DATASETS['digits']
        self.normalize = T_.Normalize(mean or info.mean, std or info.std)
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


def _build_synthetic(cfg, spec, include_train):
    sizes = [int(v) for v in get_option(cfg, 'synthetic_size')]
    if len(sizes) != 2 or min(sizes) < 1:
        raise DatasetError(f'synthetic_size must be [train_samples, eval_samples] with both >= 1, got {sizes}')
    size = get_option(cfg, 'img_size') or spec.img_size
    classes = getattr(cfg, 'num_classes', None) or spec.num_classes
    train = SyntheticDataset(sizes[0], size, classes, seed=0) if include_train else None
    return train, SyntheticDataset(sizes[1], size, classes, seed=1)


def _build_digits(cfg, spec, include_train):
    size = get_option(cfg, 'img_size') or spec.img_size
    mean, std = get_option(cfg, 'mean'), get_option(cfg, 'std')
    train = (DigitsDataset(True, size, mean, std, augment=bool(get_option(cfg, 'digits_augment')))
             if include_train else None)
    return train, DigitsDataset(False, size, mean, std)


# ----------------------------------------------------------------------------------------------------------
# CIFAR (torchvision classes; batch files read without executing code)

class CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python batches: admits only what the format holds.

    The batches are dicts of str/bytes, int lists and uint8 numpy arrays; rebuilding an array needs numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype`` (``_frombuffer`` for files written at protocol 5, and
    ``_codecs.encode`` for bytes written by Python 3 at protocol 2). Any other global (e.g. ``os.system`` in a
    crafted ``__reduce__``) raises ``UnpicklingError`` before anything is called.
    """

    _RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.core / numpy._core .multiarray._reconstruct
    _FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.core / numpy._core .numeric._frombuffer
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'): _RECONSTRUCT,
               ('numpy._core.multiarray', '_reconstruct'): _RECONSTRUCT,
               ('numpy.core.numeric', '_frombuffer'): _FROMBUFFER,
               ('numpy._core.numeric', '_frombuffer'): _FROMBUFFER,
               ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}

    def find_class(self, module, name):
        if (module, name) == ('_codecs', 'encode'):
            import codecs
            return codecs.encode
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f'refused to load {module}.{name}: a CIFAR batch holds only dicts, lists, '
                                     f'strings and numpy arrays, so this is not an original CIFAR file '
                                     f'(loading it could run code)')


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch/meta file as a dict, read with :class:`CifarUnpickler`.

    Raises ``DatasetError`` naming the file when it is not a readable CIFAR batch.
    """
    try:
        with open(path, 'rb') as f:
            entry = CifarUnpickler(f, encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as err:
        raise DatasetError(f'{path} is not a readable CIFAR batch ({type(err).__name__}: {err}). Delete '
                           f'{Path(path).parent} and download it again (--download true).') from None
    if not isinstance(entry, dict):
        raise DatasetError(f'{path} is not a CIFAR batch (holds a {type(entry).__name__}, not a dict). Delete '
                           f'{Path(path).parent} and download it again (--download true).')
    return entry


def _without_md5(files):
    return [[name, None] for name, _ in files]


class _SafeCifarLoading:
    """torchvision's CIFAR dataset with the batch files read by :func:`read_cifar_batch`.

    Integrity = files present (``prepare_data --verify`` checks the official md5 sums), so that subsets
    written in the same format load too. ``__getitem__``, ``download`` and the class attributes stay
    torchvision's.
    """

    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False):
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        folder = Path(self.root) / self.base_folder
        data, self.targets = [], []
        for file_name, _ in (self.train_list if train else self.test_list):
            entry = read_cifar_batch(folder / file_name)
            labels = entry.get('labels', entry.get('fine_labels'))
            if 'data' not in entry or labels is None:
                raise DatasetError(f'{folder / file_name} has no data/labels entries; delete {folder} and '
                                   f'download it again (--download true)')
            data.append(np.asarray(entry['data'], dtype=np.uint8))
            self.targets.extend(int(t) for t in labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        meta = read_cifar_batch(folder / self.meta['filename'])
        if self.meta['key'] not in meta:
            raise DatasetError(f'{folder / self.meta["filename"]} has no {self.meta["key"]!r} entry; delete '
                               f'{folder} and download it again (--download true)')
        self.classes = list(meta[self.meta['key']])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10Files(_SafeCifarLoading, CIFAR10):
    """torchvision's CIFAR-10, batches read without executing code (see ``_SafeCifarLoading``)."""
    train_list = _without_md5(CIFAR10.train_list)
    test_list = _without_md5(CIFAR10.test_list)
    meta = dict(CIFAR10.meta, md5=None)


class CIFAR100Files(_SafeCifarLoading, CIFAR100):
    """torchvision's CIFAR-100, batches read without executing code (see ``_SafeCifarLoading``)."""
    train_list = _without_md5(CIFAR100.train_list)
    test_list = _without_md5(CIFAR100.test_list)
    meta = dict(CIFAR100.meta, md5=None)


def _cifar_transforms(cfg, spec):
    from timm.data import create_transform

    img_size = get_option(cfg, 'img_size') or spec.img_size
    mean, std = tuple(get_option(cfg, 'mean') or spec.mean), tuple(get_option(cfg, 'std') or spec.std)
    primary, _, final = create_transform(
        img_size, is_training=True, separate=True,
        scale=tuple(get_option(cfg, 'scale')), ratio=tuple(get_option(cfg, 'ratio')),
        hflip=get_option(cfg, 'hflip'), color_jitter=None, interpolation=get_option(cfg, 'train_interpolation'),
        mean=mean, std=std, re_prob=get_option(cfg, 'reprob'), re_mode=get_option(cfg, 'remode'),
        re_count=get_option(cfg, 'recount'))
    aa = get_option(cfg, 'aa')
    secondary = [snn_rand_augment(aa, img_size, mean, get_option(cfg, 'train_interpolation'))] if aa else []
    train_tf = T_.Compose(list(primary.transforms) + secondary + list(final.transforms))
    eval_tf = create_transform(img_size, is_training=False, interpolation=get_option(cfg, 'interpolation'),
                               crop_pct=get_option(cfg, 'crop_pct') or 1.0, mean=mean, std=std)
    return train_tf, eval_tf


def _build_cifar(cfg, spec, include_train, cls):
    name, root = spec.name, data_root(cfg)
    if get_option(cfg, 'download'):
        try:
            cls(str(root), train=False, download=True)
        except Exception as e:  # network or disk problem
            raise missing_data_error(name, root, f'download into {root} failed ({type(e).__name__}: {e})') from None
    folder = root / cls.base_folder
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta['filename']]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        what = 'not found' if len(missing) == len(needed) else 'incomplete, missing ' + ', '.join(missing)
        raise missing_data_error(name, root, f'{what} in {folder}')
    train_tf, eval_tf = _cifar_transforms(cfg, spec)
    eval_set = cls(str(root), train=False, transform=eval_tf)
    train_set = cls(str(root), train=True, transform=train_tf) if include_train else None
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


_FRAME_CLASSES = ('CIFAR10DVSFrames', 'DVS128GestureFrames')  # created on first use (see __getattr__)


def _make_frames_class(class_name: str):
    """spikingjelly's dataset class, reading already-integrated frames without touching the raw data.

    A frame file that cannot be read raises ``BadSampleError`` naming it (``NamedSampleErrors``).

    spikingjelly's ``prepare_raw_dataset`` would start a download (CIFAR10-DVS) or fail (Gesture) when the
    intermediate ``events_np/`` folder is absent, even if the frames exist. Frame integration is done
    explicitly by ``python -m utils.prepare_data``, so loading never starts a download or a conversion.
    """
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    base = {'CIFAR10DVSFrames': CIFAR10DVS, 'DVS128GestureFrames': DVS128Gesture}[class_name]
    cls = type(class_name, (NamedSampleErrors, base), {'prepare_raw_dataset': lambda self: None,
                                                       '__module__': __name__, '__doc__': _make_frames_class.__doc__})
    globals()[class_name] = cls
    return cls


def __getattr__(attr):
    # Lazy module attributes (PEP 562): importing spikingjelly.datasets costs seconds, so the frame classes are
    # created on first use; defined here so that DataLoader workers can pickle them by name.
    if attr in _FRAME_CLASSES:
        return _make_frames_class(attr)
    raise AttributeError(f'module {__name__!r} has no attribute {attr!r}')


def _check_frames(name: str, root: Path, T: int):
    frames = _frames_dir(root, T)
    marker = frames.with_name(frames.name + '.building')
    if marker.exists():
        raise missing_data_error(name, root, f'frame conversion into {frames} did not finish (found {marker.name}). '
                                         f'Delete {frames} and {marker}, then rerun the command below.', T)
    if not frames.is_dir():
        other = sorted(p.name for p in root.glob('frames_number_*_split_by_number')) if root.is_dir() else []
        hint = f' (found {", ".join(other)}: frames for another T; T={T} is requested)' if other else ''
        raise missing_data_error(name, root, f'no frames for T={T} in {root}{hint}', T)
    if name == 'cifar10dvs':
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES
        expected = [frames / c for c in CIFAR10DVS_CLASS_NAMES]
    else:
        expected = [frames / split / str(c) for split in ('train', 'test') for c in range(11)]
    missing = [str(p.relative_to(root)) for p in expected if not p.is_dir() or not any(p.glob('*.np[yz]'))]
    if missing:
        raise missing_data_error(name, root,
                                 f'frames incomplete: empty or missing class folders {", ".join(missing)}', T)


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


def _build_events(cfg, spec, include_train, frames_class: str):
    name, root = spec.name, data_root(cfg)
    T = int(get_option(cfg, 'T'))
    img_size = get_option(cfg, 'img_size')
    if img_size not in (None, spec.img_size):
        raise DatasetError(f'{name}: img_size={img_size} is not supported; event frames are used at their native '
                           f'{spec.img_size}x{spec.img_size} (set img_size to null or {spec.img_size})')
    if get_option(cfg, 'download'):
        raise DatasetError(f'{name}: download=true is not supported inside training (conversion takes long and '
                           f'must not run once per process). Run once:\n  '
                           + _prepare_cmd(name, root, T, download=name == 'cifar10dvs'))
    _check_frames(name, root, T)
    cls = globals().get(frames_class) or _make_frames_class(frames_class)
    augment = bool(get_option(cfg, 'event_augment'))
    train_tf, eval_tf = EventFrames(augment, get_option(cfg, 'hflip')), EventFrames(False)
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
        raise missing_data_error(name, root, f'spikingjelly could not read the frames ({e})', T) from None
    return train_set, eval_set


# ----------------------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)

class CheckedImageFolder(NamedSampleErrors, ImageFolder):
    """torchvision's ImageFolder; an image that cannot be decoded raises ``BadSampleError`` naming the file."""


def _imagenet_transforms(cfg, spec):
    from timm.data import create_transform

    img_size = get_option(cfg, 'img_size') or spec.img_size
    mean, std = tuple(get_option(cfg, 'mean') or spec.mean), tuple(get_option(cfg, 'std') or spec.std)
    crop_pct = get_option(cfg, 'crop_pct') or (0.875 if img_size <= 224 else 1.0)
    train_tf = create_transform(
        img_size, is_training=True, scale=tuple(get_option(cfg, 'scale')), ratio=tuple(get_option(cfg, 'ratio')),
        hflip=get_option(cfg, 'hflip'), color_jitter=get_option(cfg, 'color_jitter'),
        auto_augment=get_option(cfg, 'aa'), interpolation=get_option(cfg, 'train_interpolation'),
        mean=mean, std=std, re_prob=get_option(cfg, 'reprob'),
        re_mode=get_option(cfg, 'remode'), re_count=get_option(cfg, 'recount'))
    eval_tf = create_transform(img_size, is_training=False, interpolation=get_option(cfg, 'interpolation'),
                               crop_pct=crop_pct, mean=mean, std=std)
    return train_tf, eval_tf


def _build_imagefolder(cfg, spec, include_train):
    name, root = spec.name, data_root(cfg)
    splits = ['train', 'val'] if include_train else ['val']
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise missing_data_error(name, root, f'missing {" and ".join(s + "/" for s in missing)} in {root}')
    train_tf, eval_tf = _imagenet_transforms(cfg, spec)
    sets = {}
    for split, tf in zip(('train', 'val'), (train_tf, eval_tf)):
        if split not in splits:
            continue
        try:
            sets[split] = CheckedImageFolder(str(root / split), transform=tf)
        except FileNotFoundError as e:
            raise missing_data_error(name, root, f'{root / split} has no class folders with images ({e})') from None
    if include_train and sets['train'].classes != sets['val'].classes:
        only = sorted(set(sets['train'].classes) ^ set(sets['val'].classes))
        raise missing_data_error(name, root,
                                 f'train/ and val/ have different class folders (e.g. {", ".join(only[:5])})')
    return sets.get('train'), sets['val']


# ----------------------------------------------------------------------------------------------------------
# the table

@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the repo knows about one dataset. ``build(cfg, spec, include_train) -> (train, eval)``.

    ``tree`` lines describe the folder under ``data_path`` (``{frames}`` = the frames folder for ``T``);
    ``prepare`` lines say how to get there (``{cmd}`` / ``{cmd_download}`` = the ``utils.prepare_data`` command,
    ``{root}`` = the folder). Both appear in errors and in docs/data.md.
    """

    name: str
    build: Callable
    num_classes: int
    in_channels: int
    kind: str                       # 'image' | 'event'
    img_size: int                   # native input size
    mean: Optional[Tuple[float, ...]]
    std: Optional[Tuple[float, ...]]
    train_size: int                 # official sample counts (CIFAR10-DVS: the published 9:1 split)
    eval_size: int
    eval_split: str = 'test'
    tree: Tuple[str, ...] = ()
    prepare: Tuple[str, ...] = ()
    aliases: Tuple[str, ...] = ()
    note: str = ''                  # for datasets without files: where the samples come from

    def info(self) -> dict:
        return dict(num_classes=self.num_classes, in_channels=self.in_channels, kind=self.kind,
                    img_size=self.img_size, mean=self.mean, std=self.std, train_size=self.train_size,
                    eval_size=self.eval_size, name=self.name)


_FRAMES_NOTE = 'extract/, events_np/                   <- intermediate files of spikingjelly'
_CIFAR_PREPARE = ('Prepare it with (downloads ~170 MB):', '  {cmd_download}',
                  'or set the config key download: true for train.py, or point data_path (--data-path) at the',
                  'folder that contains {folder}/.')

DATASETS: Dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec('digits', _build_digits, 10, 3, 'image', 32, (0.3053,) * 3, (0.3236,) * 3, 1437, 360,
                note='bundled with scikit-learn'),
    DatasetSpec('synthetic', _build_synthetic, 10, 3, 'image', 32, None, None, 5000, 1000,
                note='generated in memory'),
    DatasetSpec('cifar10', partial(_build_cifar, cls=CIFAR10Files), 10, 3, 'image', 32,
                DATA_CFG['cifar']['mean'], DATA_CFG['cifar']['std'], 50000, 10000,
                tree=('cifar-10-batches-py/', '    batches.meta', '    data_batch_1 ... data_batch_5',
                      '    test_batch'),
                prepare=_CIFAR_PREPARE, aliases=('torch/cifar10',)),
    DatasetSpec('cifar100', partial(_build_cifar, cls=CIFAR100Files), 100, 3, 'image', 32,
                (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 50000, 10000,
                tree=('cifar-100-python/', '    meta', '    train', '    test'),
                prepare=_CIFAR_PREPARE, aliases=('torch/cifar100',)),
    DatasetSpec('cifar10dvs', partial(_build_events, frames_class='CIFAR10DVSFrames'), 10, 2, 'event', 128,
                None, None, 9000, 1000,
                tree=('{frames}/            <- frames used for training (T={T}), made by prepare_data',
                      '    airplane/  cifar10_airplane_0.npz ... (1000 files, key "frames": [T,2,128,128])',
                      '    automobile/ bird/ cat/ deer/ dog/ frog/ horse/ ship/ truck/',
                      'download/  airplane.zip ... truck.zip   <- raw recordings (or --download)', _FRAMES_NOTE),
                prepare=('Prepare it with (downloads the recordings from figshare and converts them to frames):',
                         '  {cmd_download}', 'or put the 10 class zips in download/ and drop --download.'),
                aliases=('cifar10-dvs',)),
    DatasetSpec('dvsgesture', partial(_build_events, frames_class='DVS128GestureFrames'), 11, 2, 'event', 128,
                None, None, 1176, 288,
                tree=('{frames}/            <- frames used for training (T={T}), made by prepare_data',
                      '    train/0/ ... train/10/   (1176 files, key "frames": [T,2,128,128])',
                      '    test/0/  ... test/10/    (288 files)',
                      'download/  DvsGesture.tar.gz gesture_mapping.csv LICENSE.txt README.txt  <- manual download',
                      'extract/, events_np/        <- intermediate files of spikingjelly'),
                prepare=('DVS128 Gesture cannot be downloaded automatically (IBM licence). Download the four files',
                         ', '.join(GESTURE_FILES) + ' from', '  ' + GESTURE_URL,
                         'into {root}/download, then run', '  {cmd}'),
                aliases=('dvs128gesture', 'dvs128', 'dvs_gesture')),
    DatasetSpec('imagenet', _build_imagefolder, 1000, 3, 'image', 224,
                DATA_CFG['imagenet']['mean'], DATA_CFG['imagenet']['std'], 1281167, 50000, eval_split='val',
                tree=('train/', '    n01440764/  n01440764_10026.JPEG ...   (1000 class folders, 1,281,167 images)',
                      '    ...', 'val/',
                      '    n01440764/  ILSVRC2012_val_00000293.JPEG ...  (1000 class folders, 50,000 images)',
                      '    ...'),
                prepare=('Get ILSVRC2012 from https://image-net.org, extract train/ and val/ with one folder per class',
                         '(the validation images must be sorted into class folders), then check the layout with',
                         '  {cmd}'),
                aliases=('imagenet1k', 'imagenet-1k')),
]}
_ALIASES = {alias: spec.name for spec in DATASETS.values() for alias in spec.aliases}


# ----------------------------------------------------------------------------------------------------------
# public entry points

def canonical_name(name: str) -> str:
    """Map a dataset name (or a published alias like 'torch/cifar10') to its canonical name."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
        raise DatasetError(f"unknown dataset {name!r}.{hint} Valid datasets: {', '.join(DATASETS)}.")
    return key


def dataset_info(name: str) -> dict:
    """``dict(num_classes, in_channels, kind, img_size, mean, std, train_size, eval_size, name)`` of a dataset.

    Sizes are the official sample counts (CIFAR10-DVS: the published 9:1 split).
    """
    return DATASETS[canonical_name(name)].info()


def expected_tree(name: str, root, T: int = 16) -> str:
    """The folder tree a dataset must have under ``root`` (a string for messages and docs)."""
    spec = DATASETS[canonical_name(name)]
    if not spec.tree:
        return f'{root}  (nothing: {spec.name} is {spec.note})'
    frames = f'frames_number_{T}_split_by_number'
    return '\n'.join([f'{root}/'] + ['  ' + line.format(frames=frames, T=T) for line in spec.tree])


def prepare_text(name: str, root, T: int = 16) -> str:
    """How to prepare a dataset in ``root`` (the lines of the error message after the folder tree)."""
    spec = DATASETS[canonical_name(name)]
    T_ = T if spec.kind == 'event' else None
    folder = spec.tree[0].rstrip('/') if spec.tree else ''
    return '\n'.join(line.format(root=root, folder=folder, cmd=_prepare_cmd(spec.name, root, T_),
                                 cmd_download=_prepare_cmd(spec.name, root, T_, download=True))
                     for line in spec.prepare)


def missing_data_error(name: str, root: Path, problem: str, T: int = 16) -> DatasetError:
    """``DatasetError``: the problem, the expected folder tree and how to prepare it (from the table)."""
    name = canonical_name(name)
    return DatasetError('\n'.join([f'{name}: {problem}', '', 'Expected layout:', expected_tree(name, root, T), '',
                                   prepare_text(name, root, T)]))


def _label_count(ds) -> Optional[int]:
    base = ds.dataset if isinstance(ds, Subset) else ds
    classes = getattr(base, 'classes', None)
    return len(classes) if classes else None


def check_num_classes(cfg, spec: DatasetSpec, eval_set) -> None:
    """``cfg.num_classes`` (if set) must cover every label of the data; raises ``DatasetError``."""
    n = getattr(cfg, 'num_classes', None)
    if n is None or spec.name == 'synthetic':  # synthetic draws its labels from num_classes
        return
    labels = _label_count(eval_set) or spec.num_classes
    if n < labels:
        raise DatasetError(f'num_classes={n} but {spec.name} has {labels} classes (labels 0..{labels - 1}): the '
                           f'model would have no output for the others. Remove num_classes (null = {labels}) '
                           f'or set it to at least {labels}.')


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
            return path, f'{type(err).__name__}: {err}'
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [bad for bad in pool.map(check, files) if bad is not None]


def verify_files(train_set, eval_set, workers: int = 4, show: int = 20) -> None:
    """Raise ``DatasetError`` listing every unreadable sample file of the two sets (``verify_data: true``)."""
    bad = find_unreadable([train_set, eval_set], workers)
    if bad:
        lines = [f'  {path}: {reason}' for path, reason in bad[:show]]
        more = [f'  ... and {len(bad) - show} more'] if len(bad) > show else []
        raise DatasetError('\n'.join([f'{len(bad)} unreadable sample file(s):'] + lines + more + [
            'Replace them with good copies or delete them, then start again.']))


def create_datasets(cfg, include_train: bool = True):
    """Build ``(train_set, eval_set)`` for ``cfg.dataset`` (``train_set`` is None if ``include_train=False``).

    Image samples: normalised float ``[C, H, W]`` and an int label. Event samples: float event counts
    ``[T, 2, 128, 128]`` (``T = cfg.T``) and an int label. Raises ``DatasetError`` with the expected folder
    tree and the preparation command when the data are missing or incomplete, when ``cfg.num_classes`` is
    smaller than the dataset's number of classes, and (``verify_data: true``) when sample files are unreadable.
    """
    spec = DATASETS[canonical_name(get_option(cfg, 'dataset'))]
    train_set, eval_set = spec.build(cfg, spec, include_train)
    check_num_classes(cfg, spec, eval_set)
    if get_option(cfg, 'verify_data'):
        verify_files(train_set, eval_set, int(get_option(cfg, 'workers') or 0))
    if spec.tree:  # datasets of files have official sizes (synthetic's are chosen, digits' fixed)
        _warn_count(spec.name, spec.eval_split, len(eval_set), spec.eval_size)
        if train_set is not None:
            _warn_count(spec.name, 'train', len(train_set), spec.train_size)
    return train_set, eval_set


def check_data_config(cfg) -> None:
    """Config-level checks of the data keys that need the dataset (name, mean/std length); ``ConfigError``."""
    try:
        spec = DATASETS[canonical_name(get_option(cfg, 'dataset'))]
    except DatasetError as err:
        raise ConfigError(f"config key 'dataset': {err}") from None
    for key in ('mean', 'std'):
        value = get_option(cfg, key)
        if value is not None and len(value) != spec.in_channels:
            raise ConfigError(f"config key '{key}': {spec.name} has {spec.in_channels} input channels, got "
                              f"{len(value)} values {list(value)}; give {spec.in_channels} or null")
    std = get_option(cfg, 'std')
    if std is not None and min(std) <= 0:
        raise ConfigError(f"config key 'std': every value must be > 0, got {list(std)}")


def mixup_active(cfg) -> bool:
    return get_option(cfg, 'mixup') > 0 or get_option(cfg, 'cutmix') > 0 or get_option(cfg, 'cutmix_minmax') is not None


def create_mixup(cfg, num_classes: int):
    """Mixup/CutMix with label smoothing for image ``[B,C,H,W]`` or event ``[B,T,C,H,W]`` batches, or None.

    Returns a ``SpatialMixup`` (a timm ``Mixup`` whose CutMix box is always over H, W: correct for 5-D event
    batches, identical to timm on images). Call ``fn(x, y) -> (x_mixed, soft_targets)``; after
    ``mixup_off_epoch`` set ``fn.mixup_enabled = False`` (targets stay label-smoothed). None when both alphas
    are 0: use label-smoothing cross-entropy then.
    """
    if not mixup_active(cfg):
        return None
    mode = get_option(cfg, 'mixup_mode')
    if mode not in ('batch', 'pair', 'elem'):
        raise DatasetError(f"mixup_mode={mode!r} is not valid; use 'batch', 'pair' or 'elem'")
    minmax = get_option(cfg, 'cutmix_minmax')
    return SpatialMixup(
        mixup_alpha=float(get_option(cfg, 'mixup')), cutmix_alpha=float(get_option(cfg, 'cutmix')),
        cutmix_minmax=tuple(minmax) if minmax is not None else None, prob=float(get_option(cfg, 'mixup_prob')),
        switch_prob=float(get_option(cfg, 'mixup_switch_prob')), mode=mode,
        label_smoothing=float(get_option(cfg, 'smoothing')), num_classes=int(num_classes))
