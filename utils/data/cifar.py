"""``cifar10`` / ``cifar100``: torchvision's datasets, batch files read without executing code."""
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset

from .files import DatasetError, read_cifar_batch
from .spec import DatasetSpec, Splits
from .transforms import cifar_transforms


def _without_md5(files: list) -> list:
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
            labels = entry.get("labels", entry.get("fine_labels"))
            if "data" not in entry or labels is None:
                raise DatasetError(f"{folder / file_name} has no data/labels entries; delete {folder} and "
                                   f"download it again (--download true)")
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            self.targets.extend(int(t) for t in labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        meta = read_cifar_batch(folder / self.meta["filename"])
        if self.meta["key"] not in meta:
            raise DatasetError(f"{folder / self.meta['filename']} has no {self.meta['key']!r} entry; delete "
                               f"{folder} and download it again (--download true)")
        self.classes = list(meta[self.meta["key"]])
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


def build_cifar(cfg, spec: DatasetSpec, include_train: bool, cls: type) -> Splits:
    """``(train, eval)`` CIFAR splits of the dataset class ``cls``; ``train`` is None unless ``include_train``."""
    root = spec.root(cfg)
    if cfg.download:
        try:
            cls(str(root), train=False, download=True)
        except Exception as e:  # network or disk problem
            raise spec.missing_error(root, f"download into {root} failed ({type(e).__name__}: {e})") from None
    folder = root / cls.base_folder
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        what = "not found" if len(missing) == len(needed) else "incomplete, missing " + ", ".join(missing)
        raise spec.missing_error(root, f"{what} in {folder}")
    train_tf, eval_tf = cifar_transforms(cfg, spec)
    eval_set = cls(str(root), train=False, transform=eval_tf)
    train_set = cls(str(root), train=True, transform=train_tf) if include_train else None
    return train_set, eval_set
