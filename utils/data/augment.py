"""Augmentations of the published recipes that are not available ready-made.

* ``snn_rand_augment``: timm RandAugment restricted to the five ops the authors kept for CIFAR
  (their ``aa_snn.py`` was a copy of timm's file with the op lists cut down; we pass the list to timm instead).
* ``EventTrivialAugment``: the TrivialAugment-style op set used on event frames (``SNNAugmentWide``),
  applied identically to all T frames and both polarity channels of one sample.
* ``SpatialMixup``: timm ``Mixup`` whose CutMix box always lies in the last two (H, W) dims, so it is
  correct for event batches ``[B, T, C, H, W]`` (the published path cut the wrong dims).
"""
import math
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.mixup import cutmix_bbox_and_lam
from timm.data.transforms import str_to_pil_interp
from torchvision.transforms import InterpolationMode, RandomErasing

# The op list of the published aa_snn.py, for both the plain and the "increasing" (inc1) variant:
# all colour/photometric ops and ShearY removed.
SNN_RAND_AUGMENT_OPS = ('Equalize', 'Rotate', 'ShearX', 'TranslateXRel', 'TranslateYRel')


def snn_rand_augment(config_str: str, img_size: int, mean: Sequence[float], interpolation: str = 'bicubic'):
    """timm RandAugment (e.g. ``'rand-m9-n1-mstd0.4-inc1'``) over ``SNN_RAND_AUGMENT_OPS``.

    Hyper-parameters are the ones timm's ``create_transform`` would pass: translate constant
    0.45 * image size, fill colour = dataset mean * 255, and the training interpolation.
    """
    if not config_str.startswith('rand'):
        raise ValueError(f"aa={config_str!r}: the CIFAR recipe only supports RandAugment strings such as "
                         f"'rand-m9-n1-mstd0.4-inc1' (or null to switch augmentation off)")
    hparams = dict(translate_const=int(img_size * 0.45),
                   img_mean=tuple(min(255, round(255 * m)) for m in mean))
    if interpolation and interpolation != 'random':
        hparams['interpolation'] = str_to_pil_interp(interpolation)
    return rand_augment_transform(config_str, hparams, transforms=list(SNN_RAND_AUGMENT_OPS))


class EventTrivialAugment(torch.nn.Module):
    """TrivialAugment-style augmentation of event frames ``[T, C, H, W]`` (the published ``SNNAugmentWide``).

    One op is drawn uniformly per sample, then one of ``num_bins`` magnitudes with a random sign:
    Identity; ShearX (shear angle = degrees(m), m in [-0.3, 0.3]); TranslateX / TranslateY
    (integer pixels in [-5, 5]); Rotate (degrees in [-30, 30]); Cutout (RandomErasing with p=1,
    area 0.001-0.11, square, value 0). Nearest interpolation and zero fill keep the frames event counts.
    The same geometric transform is applied to every frame and channel of the sample.
    """

    OPS = ('Identity', 'ShearX', 'TranslateX', 'TranslateY', 'Rotate', 'Cutout')

    def __init__(self, num_bins: int = 31):
        super().__init__()
        self.num_bins = num_bins
        self.max_magnitude = {'ShearX': 0.3, 'TranslateX': 5.0, 'TranslateY': 5.0, 'Rotate': 30.0}
        self.cutout = RandomErasing(p=1.0, scale=(0.001, 0.11), ratio=(1.0, 1.0), value=0)

    def _magnitude(self, op: str) -> float:
        m = self.max_magnitude[op]
        bins = torch.linspace(-m, m, self.num_bins)
        magnitude = float(bins[int(torch.randint(self.num_bins, (1,)))])
        if torch.randint(2, (1,)):
            magnitude = -magnitude
        return magnitude

    def apply(self, frames: torch.Tensor, op: str, magnitude: float = 0.0) -> torch.Tensor:
        """Apply ``op`` with ``magnitude`` to ``frames`` [..., H, W] (exposed for tests)."""
        nearest = InterpolationMode.NEAREST
        if op == 'Identity':
            return frames
        if op == 'ShearX':
            return TF.affine(frames, angle=0.0, translate=[0, 0], scale=1.0,
                             shear=[math.degrees(magnitude), 0.0], interpolation=nearest)
        if op == 'TranslateX':
            return TF.affine(frames, angle=0.0, translate=[int(magnitude), 0], scale=1.0,
                             shear=[0.0, 0.0], interpolation=nearest)
        if op == 'TranslateY':
            return TF.affine(frames, angle=0.0, translate=[0, int(magnitude)], scale=1.0,
                             shear=[0.0, 0.0], interpolation=nearest)
        if op == 'Rotate':
            return TF.rotate(frames, magnitude, interpolation=nearest)
        if op == 'Cutout':
            return self.cutout(frames)
        raise ValueError(f'unknown event augmentation op {op!r}; valid: {self.OPS}')

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        op = self.OPS[int(torch.randint(len(self.OPS), (1,)))]
        magnitude = self._magnitude(op) if op in self.max_magnitude else 0.0
        return self.apply(frames, op, magnitude)

    def extra_repr(self) -> str:
        return f'ops={self.OPS}, num_bins={self.num_bins}'


class SpatialMixup(Mixup):
    """timm ``Mixup`` / CutMix that works on images ``[B, C, H, W]`` and event frames ``[B, T, C, H, W]``.

    Bug fixed: timm (0.6.12, and still 1.0.x) writes the CutMix box with ``x[:, :, yl:yh, xl:xh]``.
    On a 5-D event batch that indexes (T, C) and H instead of H and W, so the published event recipe
    cut a band of polarity channels/rows across all columns while computing lambda as if an HxW box had
    been pasted. Here the box is written with ``x[..., yl:yh, xl:xh]``: it covers rows yl:yh and columns
    xl:xh of every time step and channel, and lambda is always corrected to the pasted area,
    ``lam = 1 - box_area / (H * W)``. On 4-D images the result is identical to timm's ``Mixup``.

    Disable mixing after the mixup-off epoch with ``mixup_fn.mixup_enabled = False``; targets then stay
    label-smoothed one-hot.
    """

    def __init__(self, *args, **kwargs):
        kwargs['correct_lam'] = True
        super().__init__(*args, **kwargs)

    def _cut(self, x, lam):
        (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, ratio_minmax=self.cutmix_minmax,
                                                    correct_lam=True)
        return (slice(int(yl), int(yh)), slice(int(xl), int(xh))), lam

    def _mix_elem(self, x):
        batch_size = len(x)
        lam_batch, use_cutmix = self._params_per_elem(batch_size)
        x_orig = x.clone()
        for i in range(batch_size):
            j = batch_size - i - 1
            lam = lam_batch[i]
            if lam != 1.:
                if use_cutmix[i]:
                    (rows, cols), lam = self._cut(x[i], lam)
                    x[i][..., rows, cols] = x_orig[j][..., rows, cols]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
        return torch.tensor(lam_batch, device=x.device, dtype=x.dtype).unsqueeze(1)

    def _mix_pair(self, x):
        batch_size = len(x)
        lam_batch, use_cutmix = self._params_per_elem(batch_size // 2)
        x_orig = x.clone()
        for i in range(batch_size // 2):
            j = batch_size - i - 1
            lam = lam_batch[i]
            if lam != 1.:
                if use_cutmix[i]:
                    (rows, cols), lam = self._cut(x[i], lam)
                    x[i][..., rows, cols] = x_orig[j][..., rows, cols]
                    x[j][..., rows, cols] = x_orig[i][..., rows, cols]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
                    x[j] = x[j] * lam + x_orig[i] * (1 - lam)
        lam_batch = np.concatenate((lam_batch, lam_batch[::-1]))
        return torch.tensor(lam_batch, device=x.device, dtype=x.dtype).unsqueeze(1)

    def _mix_batch(self, x):
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.:
            return 1.
        if use_cutmix:
            (rows, cols), lam = self._cut(x, lam)
            x[..., rows, cols] = x.flip(0)[..., rows, cols]
        else:
            x_flipped = x.flip(0).mul_(1. - lam)
            x.mul_(lam).add_(x_flipped)
        return lam

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if x.dim() not in (4, 5):
            raise ValueError(f'mixup/cutmix expects [B,C,H,W] images or [B,T,C,H,W] event frames, '
                             f'got a tensor of shape {tuple(x.shape)}')
        if len(x) % 2 != 0:
            raise ValueError(f'mixup/cutmix needs an even batch size per process, got {len(x)}; '
                             f'use an even batch_size (the train loader drops the last incomplete batch)')
        return super().__call__(x, target)
