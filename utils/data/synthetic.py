"""``synthetic``: random CIFAR-shaped data held in memory (throughput measurements, no I/O)."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .files import DatasetError
from .spec import DatasetSpec, Splits


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

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.resize_per_sample:
            img = self._resize(img[None])[0]
        return img, self.targets[index]


def build_synthetic(cfg, spec: DatasetSpec, include_train: bool) -> Splits:
    """``(train, eval)`` random splits of ``synthetic_size`` samples; ``train`` is None unless ``include_train``."""
    sizes = [int(v) for v in cfg.synthetic_size]
    if len(sizes) != 2 or min(sizes) < 1:
        raise DatasetError(f"synthetic_size must be [train_samples, eval_samples] with both >= 1, got {sizes}")
    size = cfg.img_size or spec.img_size
    classes = cfg.num_classes or spec.num_classes
    train = SyntheticDataset(sizes[0], size, classes, seed=0) if include_train else None
    return train, SyntheticDataset(sizes[1], size, classes, seed=1)
