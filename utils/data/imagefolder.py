"""``imagenet`` (and any dataset of class folders): torchvision's ImageFolder, unreadable images named."""
from torchvision.datasets import ImageFolder

from .files import NamedSampleErrors
from .spec import DatasetSpec, Splits
from .transforms import imagenet_transforms


class CheckedImageFolder(NamedSampleErrors, ImageFolder):
    """torchvision's ImageFolder; an image that cannot be decoded raises ``BadSampleError`` naming the file."""


def build_imagefolder(cfg, spec: DatasetSpec, include_train: bool) -> Splits:
    """``(train, eval)`` class-folder splits ``train/`` and ``val/``; ``train`` is None unless ``include_train``."""
    root = spec.root(cfg)
    splits = ["train", "val"] if include_train else ["val"]
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise spec.missing_error(root, f"missing {' and '.join(s + '/' for s in missing)} in {root}")
    train_tf, eval_tf = imagenet_transforms(cfg, spec)
    sets = {}
    for split, tf in zip(("train", "val"), (train_tf, eval_tf)):
        if split not in splits:
            continue
        try:
            sets[split] = CheckedImageFolder(str(root / split), transform=tf)
        except FileNotFoundError as e:
            raise spec.missing_error(root, f"{root / split} has no class folders with images ({e})") from None
    if include_train and sets["train"].classes != sets["val"].classes:
        only = sorted(set(sets["train"].classes) ^ set(sets["val"].classes))
        raise spec.missing_error(root, f"train/ and val/ have different class folders (e.g. {', '.join(only[:5])})")
    return sets.get("train"), sets["val"]
