"""Recipe-parity augmentations: reduced RandAugment, event TrivialAugment, 5-D-correct mixup/cutmix."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment

from utils.data.augment import SNN_RAND_AUGMENT_OPS, EventTrivialAugment, SpatialMixup, snn_rand_augment

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


def test_reduced_rand_augment_has_exactly_the_published_ops():
    ra = snn_rand_augment('rand-m9-n1-mstd0.4-inc1', 32, CIFAR10_MEAN, 'bicubic')
    assert isinstance(ra, RandAugment)
    assert sorted(op.name for op in ra.ops) == sorted(['Equalize', 'Rotate', 'ShearX', 'TranslateXRel',
                                                       'TranslateYRel'])
    assert set(SNN_RAND_AUGMENT_OPS) == {op.name for op in ra.ops}
    assert ra.num_layers == 1
    for op in ra.ops:
        assert op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.4
        # fill colour = dataset mean * 255, bicubic resampling (as timm's create_transform would pass)
        assert op.kwargs['fillcolor'] == (125, 123, 114)
        assert op.kwargs['resample'] == Image.BICUBIC
    # the op set is the same without "inc1" (the published file cut both lists)
    assert {op.name for op in snn_rand_augment('rand-m9-n1-mstd0.4', 32, CIFAR10_MEAN).ops} == set(SNN_RAND_AUGMENT_OPS)


def test_reduced_rand_augment_runs_on_images_and_rejects_other_policies():
    ra = snn_rand_augment('rand-m9-n1-mstd0.4-inc1', 32, CIFAR10_MEAN)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), dtype=np.uint8))
    for _ in range(20):
        out = ra(img)
        assert out.size == (32, 32) and out.mode == 'RGB'
    with pytest.raises(ValueError, match='RandAugment'):
        snn_rand_augment('augmix-m5', 32, CIFAR10_MEAN)


def _frames(T=3, C=2, H=20, W=24, seed=0):
    """Event-count frames where every time step and channel holds the same picture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 4, (H, W), generator=g).float()
    return base.expand(T, C, H, W).clone(), base


def test_event_trivial_augment_op_set_and_same_transform_for_all_frames():
    aug = EventTrivialAugment()
    assert aug.OPS == ('Identity', 'ShearX', 'TranslateX', 'TranslateY', 'Rotate', 'Cutout')
    x, base = _frames()
    torch.manual_seed(0)
    changed = 0
    for _ in range(60):
        y = aug(x)
        assert y.shape == x.shape
        # one transform for the whole sample: all T frames and both channels stay identical
        assert torch.equal(y, y[:1, :1].expand_as(y))
        # nearest interpolation + zero fill: outputs are still event counts from the input
        assert set(y.unique().tolist()) <= set(base.unique().tolist()) | {0.0}
        changed += int(not torch.equal(y, x))
    assert changed > 20  # identity is 1 op in 6


def test_event_ops_magnitudes():
    aug = EventTrivialAugment()
    x, base = _frames(H=10, W=12)
    shifted = aug.apply(x, 'TranslateX', 3.7)  # integer pixels: 3 to the right, zero fill
    assert torch.equal(shifted[0, 0, :, 3:], base[:, :-3]) and shifted[..., :3].abs().sum() == 0
    down = aug.apply(x, 'TranslateY', -2.0)
    assert torch.equal(down[0, 0, :-2], base[2:]) and down[..., -2:, :].abs().sum() == 0
    assert torch.equal(aug.apply(x, 'Identity'), x)
    torch.manual_seed(1)
    cut = aug.apply(torch.ones(2, 2, 64, 64), 'Cutout')
    erased = (cut == 0)
    assert erased.any() and torch.equal(erased, erased[:1, :1].expand_as(erased))
    assert erased[0, 0].sum() <= 0.11 * 64 * 64 + 1
    # magnitudes are drawn from symmetric 31-bin ranges
    torch.manual_seed(0)
    mags = {op: [aug._magnitude(op) for _ in range(200)] for op in aug.max_magnitude}
    for op, m in aug.max_magnitude.items():
        assert max(abs(v) for v in mags[op]) <= m + 1e-6
        assert min(mags[op]) < 0 < max(mags[op])
    with pytest.raises(ValueError, match='unknown event augmentation op'):
        aug.apply(x, 'Solarize')


def _labelled_batch(shape):
    """Batch whose sample b is filled with the constant b + 1, labels 0..B-1."""
    B = shape[0]
    x = torch.arange(1, B + 1, dtype=torch.float32).view(B, *([1] * (len(shape) - 1))).expand(shape).clone()
    return x, torch.arange(B)


def _box(mask):
    """(rows, cols) of the pasted region of one [H, W] mask; asserts it is an axis-aligned rectangle."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if len(rows):
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert mask.sum() == len(rows) * len(cols)
    return rows, cols


@pytest.mark.parametrize('seed', [0, 2, 3, 6, 10])  # seeds whose box is not empty
def test_5d_cutmix_box_is_over_h_w_for_all_t_and_channels(seed):
    B, T, C, H, W = 4, 3, 2, 16, 20
    mix = SpatialMixup(mixup_alpha=0., cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=B)
    x, y = _labelled_batch((B, T, C, H, W))
    np.random.seed(seed)
    out, target = mix(x, y)
    for b in range(B):
        pasted = out[b] == B - b  # batch mode pastes from the flipped batch
        # same box in every time step and channel
        assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted))
        rows, cols = _box(pasted[0, 0])
        assert 0 < len(rows) < H and 0 < len(cols) <= W
        lam = 1 - len(rows) * len(cols) / (H * W)
        assert target[b, b].item() == pytest.approx(lam, abs=1e-6)
        assert target[b, B - 1 - b].item() == pytest.approx(1 - lam, abs=1e-6)
        assert torch.all((out[b] == b + 1) | pasted)


def test_published_timm_cutmix_cuts_the_wrong_dims_on_5d():
    """Documents the bug we fix: timm's Mixup pastes whole-width row bands on [B,T,C,H,W]."""
    B, T, C, H, W = 4, 3, 2, 16, 20
    kw = dict(mixup_alpha=0., cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=B)
    for seed in range(10):
        x, y = _labelled_batch((B, T, C, H, W))
        np.random.seed(seed)
        out, _ = Mixup(**kw)(x, y)
        pasted = out[0] != 1
        if pasted.any():
            # every pasted pixel lies in a row pasted across all W columns: the box went into (C, H), not (H, W)
            assert torch.equal(pasted, pasted.all(-1, keepdim=True).expand_as(pasted))
            return
    pytest.fail('timm Mixup never pasted anything in 10 seeds')


@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_5d_cutmix_elem_and_pair_modes(mode):
    B, T, C, H, W = 6, 2, 2, 12, 12
    mix = SpatialMixup(mixup_alpha=0., cutmix_alpha=1.0, prob=1.0, mode=mode, label_smoothing=0.0, num_classes=B)
    x, y = _labelled_batch((B, T, C, H, W))
    np.random.seed(0)
    out, target = mix(x, y)
    for b in range(B):
        pasted = out[b] == B - b
        assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted))
        rows, cols = _box(pasted[0, 0])
        assert target[b, b].item() == pytest.approx(1 - len(rows) * len(cols) / (H * W), abs=1e-6)


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
def test_identical_to_timm_on_4d_images(mode):
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode=mode, label_smoothing=0.1,
              num_classes=10)
    g = torch.Generator().manual_seed(0)
    for seed in range(6):
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        np.random.seed(seed)
        ours = SpatialMixup(**kw)(x.clone(), y)
        np.random.seed(seed)
        ref = Mixup(**kw)(x.clone(), y)
        assert torch.allclose(ours[0], ref[0]) and torch.allclose(ours[1], ref[1])


def test_mixup_blend_on_5d_and_mixup_off():
    B = 4
    mix = SpatialMixup(mixup_alpha=1.0, cutmix_alpha=0., prob=1.0, label_smoothing=0.1, num_classes=B)
    x, y = _labelled_batch((B, 2, 2, 8, 8))
    np.random.seed(0)
    out, target = mix(x.clone(), y)
    lam = target[0, 0].item() - 0.1 / B  # on = 1 - smoothing + smoothing / classes
    lam = lam / 0.9
    assert torch.allclose(out[0], x[0] * lam + x[-1] * (1 - lam), atol=1e-5)
    mix.mixup_enabled = False  # after mixup_off_epoch
    out, target = mix(x.clone(), y)
    assert torch.equal(out, x)
    assert torch.allclose(target, torch.full((B, B), 0.1 / B) + 0.9 * torch.eye(B))


def test_mixup_rejects_odd_batches_and_bad_shapes():
    mix = SpatialMixup(mixup_alpha=1.0, num_classes=10)
    with pytest.raises(ValueError, match='even batch size'):
        mix(torch.zeros(3, 2, 2, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[B,T,C,H,W\]'):
        mix(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long))
