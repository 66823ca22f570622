"""``digits``: scikit-learn's bundled 8x8 handwritten digits, as small CIFAR-shaped images."""
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T_

from .spec import DatasetSpec, Splits


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits, bilinearly upsampled to ``img_size`` and replicated to 3 channels.

    Fixed stratified 80/20 split (``train_test_split(..., stratify=labels, random_state=0)``: 1437 / 360).
    The 17 grey levels (0-16) are scaled to [0, 1], then normalised with the train-split statistics.
    3 channels so that every CIFAR model runs on it unchanged.
    """

    SPLIT_SEED = 0

    def __init__(self, train: bool, img_size: int, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False):
        from sklearn.datasets import load_digits  # lazy: scikit-learn takes ~1 s to import, only digits needs it
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        labels = digits.target.astype(np.int64)
        train_idx, eval_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                               random_state=self.SPLIT_SEED)
        idx = np.sort(train_idx if train else eval_idx)
        images = torch.tensor(digits.images[idx], dtype=torch.float32).unsqueeze(1) / 16.0
        self.images = F.interpolate(images, size=(img_size, img_size), mode="bilinear",
                                    align_corners=False).clamp_(0.0, 1.0)
        self.targets = labels[idx].tolist()
        self.indices = idx
        self.normalize = T_.Normalize(mean, std)
        self.augment = T_.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)) if augment else None
        # without augmentation a sample is pure indexing: normalised once here (the same elementwise maths)
        self.normalized = None if augment else self.normalize(self.images.expand(-1, 3, -1, -1)).contiguous()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if self.normalized is not None:
            return self.normalized[index], self.targets[index]
        return self.normalize(self.augment(self.images[index].expand(3, -1, -1))), self.targets[index]


def build_digits(cfg, spec: DatasetSpec, include_train: bool) -> Splits:
    """``(train, eval)`` digits splits; ``train`` is None unless ``include_train``."""
    size = cfg.img_size or spec.img_size
    mean, std = cfg.mean or spec.mean, cfg.std or spec.std
    train = (DigitsDataset(True, size, mean, std, augment=bool(cfg.digits_augment))
             if include_train else None)
    return train, DigitsDataset(False, size, mean, std)
