"""Training and evaluation transforms: timm's for images (CIFAR with the reduced RandAugment of the
published recipe), :class:`EventFrames` for event frames."""
from typing import Callable, Tuple

import numpy as np
import torch
from timm.data import create_transform
from torchvision import transforms as T_

from .augment import EventTrivialAugment, snn_rand_augment
from .spec import DatasetSpec

Transforms = Tuple[Callable, Callable]


def cifar_transforms(cfg, spec: DatasetSpec) -> Transforms:
    """``(train, eval)`` transforms of CIFAR: timm's, plus the published reduced RandAugment (``aa``)."""
    img_size = cfg.img_size or spec.img_size
    mean, std = tuple(cfg.mean or spec.mean), tuple(cfg.std or spec.std)
    primary, _, final = create_transform(
        img_size, is_training=True, separate=True,
        scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, color_jitter=None, interpolation=cfg.train_interpolation,
        mean=mean, std=std, re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount)
    aa = cfg.aa
    secondary = [snn_rand_augment(aa, img_size, mean, cfg.train_interpolation)] if aa else []
    train_tf = T_.Compose(list(primary.transforms) + secondary + list(final.transforms))
    eval_tf = create_transform(img_size, is_training=False, interpolation=cfg.interpolation,
                               crop_pct=cfg.crop_pct or 1.0, mean=mean, std=std)
    return train_tf, eval_tf


def imagenet_transforms(cfg, spec: DatasetSpec) -> Transforms:
    """``(train, eval)`` transforms of ImageNet-style folders: timm's ``create_transform``."""
    img_size = cfg.img_size or spec.img_size
    mean, std = tuple(cfg.mean or spec.mean), tuple(cfg.std or spec.std)
    crop_pct = cfg.crop_pct or (0.875 if img_size <= 224 else 1.0)
    train_tf = create_transform(
        img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, color_jitter=cfg.color_jitter,
        auto_augment=cfg.aa, interpolation=cfg.train_interpolation,
        mean=mean, std=std, re_prob=cfg.reprob,
        re_mode=cfg.remode, re_count=cfg.recount)
    eval_tf = create_transform(img_size, is_training=False, interpolation=cfg.interpolation,
                               crop_pct=crop_pct, mean=mean, std=std)
    return train_tf, eval_tf


class EventFrames:
    """Numpy frames [T,2,H,W] of event counts -> float tensor, optionally augmented (training)."""

    def __init__(self, augment: bool, hflip: float = 0.5):
        self.flip = T_.RandomHorizontalFlip(hflip) if augment and hflip > 0 else None
        self.augment = EventTrivialAugment() if augment else None

    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames, dtype=np.float32))
        if self.flip is not None:
            x = self.flip(x)
        if self.augment is not None:
            x = self.augment(x)
        return x

    def __repr__(self) -> str:
        return f"EventFrames(flip={self.flip}, augment={self.augment})"
