"""Mixup / CutMix of training batches (images and event frames) with label smoothing, from the data keys."""
from typing import Optional

from .augment import SpatialMixup
from .files import DatasetError


def mixup_active(cfg) -> bool:
    """Whether mixup or cutmix is on (either alpha > 0, or a cutmix box range set)."""
    return cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None


def create_mixup(cfg, num_classes: int) -> Optional[SpatialMixup]:
    """Mixup/CutMix with label smoothing for image ``[B,C,H,W]`` or event ``[B,T,C,H,W]`` batches, or None.

    Returns a ``SpatialMixup`` (a timm ``Mixup`` whose CutMix box is always over H, W: correct for 5-D event
    batches, identical to timm on images). Call ``fn(x, y) -> (x_mixed, soft_targets)``; after
    ``mixup_off_epoch`` set ``fn.mixup_enabled = False`` (targets stay label-smoothed). None when both alphas
    are 0: use label-smoothing cross-entropy then.
    """
    if not mixup_active(cfg):
        return None
    mode = cfg.mixup_mode
    if mode not in ("batch", "pair", "elem"):
        raise DatasetError(f"mixup_mode={mode!r} is not valid; use 'batch', 'pair' or 'elem'")
    minmax = cfg.cutmix_minmax
    return SpatialMixup(
        mixup_alpha=float(cfg.mixup), cutmix_alpha=float(cfg.cutmix),
        cutmix_minmax=tuple(minmax) if minmax is not None else None, prob=float(cfg.mixup_prob),
        switch_prob=float(cfg.mixup_switch_prob), mode=mode,
        label_smoothing=float(cfg.smoothing), num_classes=int(num_classes))
