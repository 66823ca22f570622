"""Data loaders on tiny files written in each dataset's real on-disk format."""
import argparse
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

from utils.tools import prepare_data
from utils.data.augment import SNN_RAND_AUGMENT_OPS, EventTrivialAugment, SpatialMixup
from utils.data import (DATA_DEFAULTS, DatasetError, SyntheticDataset, create_datasets, create_mixup, dataset_info,
                        expected_tree, split_per_class)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_cfg(**kw):
    cfg = dict(DATA_DEFAULTS)
    cfg.update(kw)
    return argparse.Namespace(**cfg)


def load(cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tiny subsets warn that counts differ from the official ones
        return create_datasets(cfg, **kw)


# ---------------------------------------------------------------- digits

def test_digits_split_is_fixed_stratified_and_normalised():
    train, test = load(make_cfg(dataset='digits'))
    assert (len(train), len(test)) == (1437, 360)
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    # disjoint, covers all 1797 images, identical on a second build
    assert set(train.indices).isdisjoint(test.indices) and len(set(train.indices) | set(test.indices)) == 1797
    _, test2 = load(make_cfg(dataset='digits'))
    assert np.array_equal(test.indices, test2.indices) and torch.equal(test[5][0], test2[5][0])
    # stratified: every class has 20% (+-1) of its images in the test split
    all_counts = np.bincount(train.targets + test.targets, minlength=10)
    test_counts = np.bincount(test.targets, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)
    # normalised with the train statistics
    imgs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(imgs.mean().item()) < 0.02 and abs(imgs.std().item() - 1) < 0.02
    # deterministic eval, upsampled from the 8x8 originals
    assert torch.equal(train[0][0], train[0][0])
    assert dataset_info('digits') == dict(dataset_info('digits'), num_classes=10, in_channels=3, kind='image',
                                          img_size=32)


def test_digits_without_augmentation_are_precomputed_with_the_same_maths():
    train, _ = load(make_cfg(dataset='digits', img_size=16, mean=[0.2, 0.3, 0.4], std=[0.5, 0.6, 0.7]))
    assert train.normalized is not None and train[7][0].shape == (3, 16, 16)
    for i in (0, 7, len(train) - 1):  # the per-sample transform the augmented path still uses
        assert torch.equal(train[i][0], train.normalize(train.images[i].expand(3, -1, -1)))
    assert not torch.equal(train[0][0][0], train[0][0][1])  # per-channel statistics honoured


def test_digits_light_augmentation_is_optional():
    train, _ = load(make_cfg(dataset='digits', digits_augment=True))
    torch.manual_seed(0)
    a, b = train[3][0], train[3][0]
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


# ---------------------------------------------------------------- synthetic (in memory)

def test_synthetic_is_cifar_shaped_deterministic_and_sized_by_the_config(monkeypatch):
    train, test = load(make_cfg(dataset='synthetic'))
    assert (len(train), len(test)) == (5000, 1000) and dataset_info('synthetic')['num_classes'] == 10
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert set(train.targets) == set(range(10)) and not torch.equal(train[0][0], test[0][0])
    again, _ = load(make_cfg(dataset='synthetic'))
    assert torch.equal(again.images, train.images) and again.targets == train.targets
    assert 'in memory' in expected_tree('synthetic', '/x')

    cfg = make_cfg(dataset='synthetic', synthetic_size=[40, 8], img_size=16)
    cfg.num_classes = 3
    train, test = load(cfg)
    assert (len(train), len(test)) == (40, 8) and train[5][0].shape == (3, 16, 16)
    assert set(train.targets) <= {0, 1, 2}
    held = load(make_cfg(dataset='synthetic', synthetic_size=[4, 2], img_size=24))[0]
    monkeypatch.setattr(SyntheticDataset, 'PRECOMPUTE_BYTES', 0)  # resized copy "too large": resized per sample
    lazy = load(make_cfg(dataset='synthetic', synthetic_size=[4, 2], img_size=24))[0]
    assert lazy.images.shape[-1] == 32 and held.images.shape[-1] == 24
    assert torch.equal(lazy[3][0], held[3][0]) and lazy[3][0].shape == (3, 24, 24)
    with pytest.raises(DatasetError, match='synthetic_size'):
        load(make_cfg(dataset='synthetic', synthetic_size=[10]))


# ---------------------------------------------------------------- CIFAR (python pickle batches)

def _write_pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, per_batch=2, n_test=4, seed=0):
    rng = np.random.RandomState(seed)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f'data_batch_{i}', per_batch) for i in range(1, 6)] + [('test_batch', n_test)]:
        data = rng.randint(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.randint(0, 10, n).tolist()
        _write_pickle(folder / name, {'batch_label': name, 'labels': labels, 'data': data,
                                      'filenames': [f'{name}_{i}.png' for i in range(n)]})
        batches[name] = (data, labels)
    _write_pickle(folder / 'batches.meta', {'label_names': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                                                            'frog', 'horse', 'ship', 'truck'],
                                            'num_cases_per_batch': per_batch, 'num_vis': 3072})
    return batches


def write_cifar100(root, n_train=6, n_test=4, seed=0):
    rng = np.random.RandomState(seed)
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True)
    out = {}
    for name, n in [('train', n_train), ('test', n_test)]:
        data = rng.randint(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.randint(0, 100, n).tolist()
        _write_pickle(folder / name, {'filenames': [f'{i}.png' for i in range(n)], 'batch_label': name,
                                      'fine_labels': fine, 'coarse_labels': [f // 5 for f in fine], 'data': data})
        out[name] = (data, fine)
    _write_pickle(folder / 'meta', {'fine_label_names': [f'class{i}' for i in range(100)],
                                    'coarse_label_names': [f'super{i}' for i in range(20)]})
    return out


CIFAR_RECIPE = dict(aa='rand-m9-n1-mstd0.4-inc1', reprob=0.25, remode='const', scale=[1.0, 1.0], ratio=[1.0, 1.0],
                    crop_pct=1.0, interpolation='bicubic', train_interpolation='bicubic')


def test_cifar10_reads_python_batches_with_the_published_pipeline(tmp_path):
    batches = write_cifar10(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        train, test = create_datasets(make_cfg(dataset='torch/cifar10', data_path=str(tmp_path), **CIFAR_RECIPE))
    assert any('train split has 10 samples, the official one has 50000' in str(w.message) for w in caught)
    assert (len(train), len(test)) == (10, 4)
    assert train.targets == sum((batches[f'data_batch_{i}'][1] for i in range(1, 6)), [])
    # eval is Resize(32) + CenterCrop(32) = identity, then normalisation
    data, labels = batches['test_batch']
    x, y = test[1]
    ref = torch.tensor(data[1].reshape(3, 32, 32), dtype=torch.float32) / 255
    ref = (ref - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert y == labels[1] and torch.allclose(x, ref, atol=1e-5)
    # train: crop (identity at scale 1) -> flip -> reduced RandAugment -> tensor -> normalise -> const erasing
    tfs = train.transform.transforms
    names = [type(t).__name__ for t in tfs]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'RandAugment', 'MaybeToTensor',
                     'Normalize', 'RandomErasing']
    ra = tfs[2]
    assert isinstance(ra, RandAugment) and {op.name for op in ra.ops} == set(SNN_RAND_AUGMENT_OPS)
    assert ra.num_layers == 1 and ra.ops[0].magnitude_std == 0.4
    erase = tfs[-1]
    assert isinstance(erase, RandomErasing) and erase.probability == 0.25 and erase.mode == 'const'
    assert tfs[0].scale == (1.0, 1.0) and tfs[0].ratio == (1.0, 1.0)
    xt, yt = train[0]
    assert xt.shape == (3, 32, 32) and xt.dtype == torch.float32 and yt == batches['data_batch_1'][1][0]


def test_cifar100_reads_python_files(tmp_path):
    files = write_cifar100(tmp_path)
    train, test = load(make_cfg(dataset='cifar100', data_path=str(tmp_path)))
    assert (len(train), len(test)) == (6, 4)
    assert load(make_cfg(dataset='cifar100', data_path=str(tmp_path)), include_train=False)[0] is None
    assert test.targets == files['test'][1] and len(test.classes) == 100
    x, _ = test[0]
    assert x.shape == (3, 32, 32)
    mean = torch.tensor(dataset_info('cifar100')['mean']).view(3, 1, 1)
    std = torch.tensor(dataset_info('cifar100')['std']).view(3, 1, 1)
    ref = (torch.tensor(files['test'][0][0].reshape(3, 32, 32), dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(x, ref, atol=1e-5)


def test_cifar_missing_or_incomplete_names_the_tree_and_the_command(tmp_path):
    with pytest.raises(DatasetError) as e:
        create_datasets(make_cfg(dataset='cifar10', data_path=str(tmp_path)))
    msg = str(e.value)
    assert 'not found' in msg and 'cifar-10-batches-py/' in msg and 'data_batch_1 ... data_batch_5' in msg
    assert f'python -m utils.tools.prepare_data --dataset cifar10 --data-dir {tmp_path} --download' in msg
    write_cifar10(tmp_path)
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').unlink()
    with pytest.raises(DatasetError, match='incomplete, missing data_batch_3'):
        create_datasets(make_cfg(dataset='cifar10', data_path=str(tmp_path)))
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(b'not a pickle')
    with pytest.raises(DatasetError, match='data_batch_3 is not a readable CIFAR batch.*download it again'):
        create_datasets(make_cfg(dataset='cifar10', data_path=str(tmp_path)))


# ---------------------------------------------------------------- event frames (spikingjelly layout)

def _write_frames(path, T, seed):
    rng = np.random.RandomState(seed)
    frames = np.zeros((T, 2, 128, 128), dtype=np.float32)
    ys, xs = rng.randint(0, 128, 50), rng.randint(0, 128, 50)
    frames[rng.randint(0, T, 50), rng.randint(0, 2, 50), ys, xs] = rng.randint(1, 5, 50)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, frames=frames)  # spikingjelly.datasets.utils.np_savez(fname, frames=frames)
    return frames


CIFAR10DVS_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def write_cifar10dvs(root, T, per_class=lambda c: 3 + c):
    frames_dir = root / f'frames_number_{T}_split_by_number'
    written = {}
    for c, name in enumerate(CIFAR10DVS_CLASSES):
        for i in range(per_class(c)):
            f = frames_dir / name / f'cifar10_{name}_{i}.npz'
            written[f.name] = (_write_frames(f, T, seed=100 * c + i), c)
    return written


def write_gesture(root, T, n_train=2, n_test=1):
    frames_dir = root / f'frames_number_{T}_split_by_number'
    written = {}
    for split, n in (('train', n_train), ('test', n_test)):
        for c in range(11):
            for i in range(n):
                f = frames_dir / split / str(c) / f'user{1 if split == "train" else 24}_led_{i}.npz'
                written[(split, c, i)] = _write_frames(f, T, seed=1000 * c + 10 * i + (split == 'test'))
    return written


def test_cifar10dvs_spikingjelly_frames_and_published_per_class_split(tmp_path):
    T = 4
    written = write_cifar10dvs(tmp_path, T)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        train, test = create_datasets(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path), T=T))
    assert any('the official one has 9000' in str(w.message) for w in caught)
    sizes = [3 + c for c in range(10)]
    assert len(train) == sum(-(-n * 9 // 10) for n in sizes) and len(train) + len(test) == sum(sizes)
    # per class: the first ceil(0.9 n) files in dataset order (spikingjelly's sorted order) are train
    full = test.dataset
    assert full.class_to_idx == {n: i for i, n in enumerate(CIFAR10DVS_CLASSES)}
    for c, n in enumerate(sizes):
        idx = [i for i, t in enumerate(full.targets) if t == c]
        n_train = -(-n * 9 // 10)
        assert [i for i in train.indices if full.targets[i] == c] == idx[:n_train]
        assert [i for i in test.indices if full.targets[i] == c] == idx[n_train:]
    # deterministic, also when only the eval set is built (validate.py)
    none, test2 = load(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path), T=T), include_train=False)
    assert none is None and test2.indices == test.indices
    # eval samples are the stored event counts, as float [T, 2, 128, 128]
    x, y = test[0]
    path = full.samples[test.indices[0]][0]
    ref, label = written[path.split('/')[-1]]
    assert x.shape == (T, 2, 128, 128) and x.dtype == torch.float32 and y == label
    assert torch.equal(x, torch.from_numpy(ref))
    # training samples go through hflip + the event TrivialAugment, eval ones do not
    assert isinstance(train.dataset.transform.augment, EventTrivialAugment) and test.dataset.transform.augment is None
    xt, _ = train[0]
    assert xt.shape == (T, 2, 128, 128)
    # loading never starts spikingjelly's download / conversion
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'frames_number_{T}_split_by_number']
    # DataLoader workers may pickle the dataset (spawn start method)
    assert len(pickle.loads(pickle.dumps(train))) == len(train)


def test_split_per_class_matches_ceil_rule():
    targets = [0] * 10 + [1] * 7 + [0] * 1000 + [2] * 1
    train, test = split_per_class(targets)
    zeros = [i for i, t in enumerate(targets) if t == 0]
    assert [i for i in train if targets[i] == 0] == zeros[:909]  # ceil(0.9 * 1010)
    assert len([i for i in train if targets[i] == 1]) == 7 and [i for i in train if targets[i] == 2] == [1017]
    assert sorted(train + test) == list(range(len(targets)))


def test_dvsgesture_official_split_from_spikingjelly_frames(tmp_path):
    T = 3
    written = write_gesture(tmp_path, T)
    train, test = load(make_cfg(dataset='dvsgesture', data_path=str(tmp_path), T=T))
    assert (len(train), len(test)) == (22, 11)
    assert sorted(set(test.targets)) == list(range(11))
    i = test.targets.index(test.class_to_idx['10'])
    x, y = test[i]
    assert x.shape == (T, 2, 128, 128) and torch.equal(x, torch.from_numpy(written[('test', 10, 0)]))
    assert str(train.root).endswith('train') and str(test.root).endswith('test')
    assert dataset_info('dvsgesture')['num_classes'] == 11 and dataset_info('dvsgesture')['kind'] == 'event'


def test_event_data_missing_incomplete_or_wrong_T(tmp_path):
    cfg = make_cfg(dataset='dvsgesture', data_path=str(tmp_path), T=16)
    with pytest.raises(DatasetError) as e:
        create_datasets(cfg)
    msg = str(e.value)
    assert 'frames_number_16_split_by_number/' in msg and 'train/0/ ... train/10/' in msg
    assert f'python -m utils.tools.prepare_data --dataset dvsgesture --data-dir {tmp_path} --T 16' in msg
    assert 'DvsGesture.tar.gz' in msg
    write_gesture(tmp_path, 4)
    with pytest.raises(DatasetError, match='found frames_number_4_split_by_number: frames for another T'):
        create_datasets(cfg)
    # a class folder without samples -> incomplete
    for f in (tmp_path / 'frames_number_4_split_by_number' / 'test' / '7').iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r'incomplete.*test/7'):
        create_datasets(make_cfg(dataset='dvsgesture', data_path=str(tmp_path), T=4))
    # an interrupted conversion
    (tmp_path / 'frames_number_4_split_by_number.building').touch()
    with pytest.raises(DatasetError, match='did not finish'):
        create_datasets(make_cfg(dataset='dvsgesture', data_path=str(tmp_path), T=4))
    with pytest.raises(DatasetError, match='--download'):
        create_datasets(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path / 'c'), T=16))


def test_prepare_data_reports_counts_and_missing_raw_data(tmp_path, capsys):
    root = tmp_path / 'gesture'
    write_gesture(root, 4)
    assert prepare_data.main(['--dataset', 'dvsgesture', '--root', str(root), '--T', '4']) == 1
    out = capsys.readouterr().out
    assert 'train: 22 samples (expected 1176)' in out and 'NOT ready' in out
    c10 = tmp_path / 'c10dvs'
    write_cifar10dvs(c10, 2, per_class=lambda c: 2)
    assert prepare_data.main(['--dataset', 'cifar10dvs', '--root', str(c10), '--T', '2']) == 1
    assert 'class airplane: 2 samples, expected 1000' in capsys.readouterr().out
    assert prepare_data.main(['--dataset', 'cifar10dvs', '--root', str(tmp_path / 'none'), '--T', '16']) == 1
    out = capsys.readouterr().out
    assert 'no raw recordings' in out and '--download' in out and not (tmp_path / 'none').exists()


def test_prepare_data_converts_raw_events_with_spikingjelly(tmp_path, monkeypatch, capsys):
    # spikingjelly's intermediate format: events_np/<split>/<label>/<name>.npz with keys t, x, y, p
    rng = np.random.RandomState(0)
    n_events = {}
    for split, n in (('train', 2), ('test', 1)):
        for c in range(11):
            for i in range(n):
                f = tmp_path / 'events_np' / split / str(c) / f'user01_led_{i}.npz'
                f.parent.mkdir(parents=True, exist_ok=True)
                k = int(rng.randint(20, 60))
                np.savez(f, t=np.sort(rng.randint(0, 10 ** 6, k)), x=rng.randint(0, 128, k), y=rng.randint(0, 128, k),
                         p=rng.randint(0, 2, k))
                n_events[(split, c, i)] = k
    monkeypatch.setattr(prepare_data, 'GESTURE_COUNTS', {'train': 22, 'test': 11})
    assert prepare_data.main(['--dataset', 'dvsgesture', '--root', str(tmp_path), '--T', '4']) == 0
    assert 'is ready' in capsys.readouterr().out
    train, test = load(make_cfg(dataset='dvsgesture', data_path=str(tmp_path), T=4))
    x, y = test[test.targets.index(test.class_to_idx['3'])]
    assert x.shape == (4, 2, 128, 128) and x.sum().item() == n_events[('test', 3, 0)]  # every event counted once
    # frames already there: checked, not rebuilt
    assert prepare_data.main(['--dataset', 'dvsgesture', '--root', str(tmp_path), '--T', '4']) == 0
    assert 'already present' in capsys.readouterr().out


def test_prepare_data_failed_download_stops_naming_the_url_and_keeps_nothing(tmp_path, monkeypatch, capsys):
    def offline(url, root, filename, md5):
        (tmp_path / 'a' / 'c10' / 'download' / filename).write_bytes(b'part')  # a partial file, then the failure
        raise OSError('<urlopen error [Errno -2] Name or service not known>')

    monkeypatch.setattr(prepare_data, 'download_url', offline)
    root = tmp_path / 'a' / 'c10'
    assert prepare_data.main(['--dataset', 'cifar10dvs', '--data-dir', str(root), '--download']) == 1
    out = capsys.readouterr().out
    assert 'airplane.zip from https://ndownloader.figshare.com/files/' in out and 'Name or service not known' in out
    assert 'Converting' not in out and 'rerun without --download' in out
    assert not (tmp_path / 'a').exists()  # the folders it made, and the partial file, are gone


def test_prepare_data_failed_conversion_names_the_partial_folders(tmp_path, monkeypatch, capsys):
    from spikingjelly.datasets import cifar10_dvs

    for c in cifar10_dvs.CIFAR10DVS_CLASS_NAMES:
        (tmp_path / 'download').mkdir(exist_ok=True)
        (tmp_path / 'download' / f'{c}.zip').touch()

    def disk_full(root, **kw):
        (tmp_path / 'extract').mkdir()
        (tmp_path / 'events_np.building').touch()
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(cifar10_dvs, 'CIFAR10DVS', disk_full)
    assert prepare_data.main(['--dataset', 'cifar10dvs', '--data-dir', str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert 'No space left on device' in out
    assert f'partial entries: {tmp_path / "events_np.building"}, {tmp_path / "extract"}.' in out


# ---------------------------------------------------------------- ImageNet (ImageFolder JPEGs)

def write_imagefolder(root, classes=('n01440764', 'n01443537'), per_class=2, size=(48, 40)):
    rng = np.random.RandomState(0)
    for split in ('train', 'val'):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                img = Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))
                img.save(root / split / c / f'{c}_{i}.JPEG', quality=90)


def test_imagenet_imagefolder_and_published_transforms(tmp_path):
    write_imagefolder(tmp_path)
    cfg = make_cfg(dataset='imagenet', data_path=str(tmp_path), img_size=32, aa='rand-m9-mstd0.5-inc1',
                   reprob=0.25, remode='pixel')
    train, val = load(cfg)
    assert (len(train), len(val)) == (4, 4) and val.classes == ['n01440764', 'n01443537']
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert val[3][0].shape == (3, 32, 32) and val[3][1] == 1
    # default 224 recipe: RRC(0.08-1) + flip + full timm RandAugment (2 ops) + erasing; eval Resize 256 + crop 224
    train, val = load(make_cfg(dataset='imagenet', data_path=str(tmp_path), aa='rand-m9-mstd0.5-inc1',
                               reprob=0.25, remode='pixel'))
    tfs = train.transform.transforms
    ra = next(t for t in tfs if isinstance(t, RandAugment))
    assert ra.num_layers == 2 and len(ra.ops) == 15 and {'ShearY', 'SolarizeIncreasing'} <= {op.name for op in ra.ops}
    assert tfs[0].scale == (0.08, 1.0) and tfs[-1].mode == 'pixel' and tfs[-1].probability == 0.25
    assert not any(type(t).__name__ == 'ColorJitter' for t in tfs)  # ignored when RandAugment is on
    resize, crop = val.transform.transforms[:2]
    assert resize.size == 256 and crop.size == (224, 224)
    assert val[0][0].shape == (3, 224, 224)


def test_imagenet_missing_or_unsorted_val(tmp_path):
    with pytest.raises(DatasetError) as e:
        create_datasets(make_cfg(dataset='imagenet', data_path=str(tmp_path)))
    assert 'missing train/ and val/' in str(e.value) and 'n01440764' in str(e.value)
    assert f'python -m utils.tools.prepare_data --dataset imagenet --data-dir {tmp_path}' in str(e.value)
    write_imagefolder(tmp_path)
    for c in (tmp_path / 'val').iterdir():  # val/ as extracted from the tar: no class folders
        for f in c.iterdir():
            f.rename(tmp_path / 'val' / f.name)
        c.rmdir()
    with pytest.raises(DatasetError, match='no class folders'):
        create_datasets(make_cfg(dataset='imagenet', data_path=str(tmp_path)))


# ---------------------------------------------------------------- interface

def test_dataset_info_and_unknown_names():
    assert dataset_info('cifar10dvs') == dict(dataset_info('cifar10dvs'), num_classes=10, in_channels=2,
                                              kind='event', img_size=128)
    assert dataset_info('torch/cifar100')['num_classes'] == 100
    assert dataset_info('imagenet')['img_size'] == 224
    with pytest.raises(DatasetError, match="unknown dataset 'cifar-10'.*'cifar10'"):
        dataset_info('cifar-10')
    assert 'bundled' in expected_tree('digits', '/x')


def test_create_mixup_follows_the_config():
    assert create_mixup(make_cfg(), 10) is None
    fn = create_mixup(make_cfg(dataset='cifar10dvs', mixup=0.5, cutmix=0.1, mixup_prob=0.5, smoothing=0.1), 10)
    assert isinstance(fn, SpatialMixup)
    assert (fn.mixup_alpha, fn.cutmix_alpha, fn.mix_prob, fn.label_smoothing, fn.num_classes) == (0.5, 0.1, 0.5,
                                                                                                 0.1, 10)
    x, y = fn(torch.zeros(4, 2, 2, 8, 8), torch.arange(4))
    assert y.shape == (4, 10)
    with pytest.raises(DatasetError, match='mixup_mode'):
        create_mixup(make_cfg(mixup=0.5, mixup_mode='batches'), 10)


def test_cifar10dvs_split_is_stable_when_files_are_removed(tmp_path):
    """A sample's side is decided by its own file name: after deleting files (e.g. unreadable ones, as the error
    advises) every remaining sample is where it was; by index, a test sample would move into training."""
    T = 2
    write_cifar10dvs(tmp_path, T, per_class=lambda c: 20)

    def sides():
        train, test = create_datasets(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path), T=T))
        return tuple({ds.dataset.samples[i][0] for i in ds.indices} for ds in (train, test))

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train, test = sides()
        assert len(train) == 180 and len(test) == 20  # complete: the published ceil(0.9 n) rule
        frames = tmp_path / f'frames_number_{T}_split_by_number' / 'airplane'
        removed = {str(frames / 'cifar10_airplane_0.npz'), str(frames / 'cifar10_airplane_1.npz')}
        for f in removed:
            os.remove(f)
        train2, test2 = sides()
    assert train2 == train - removed and test2 == test
    names = [os.path.basename(p) for p in sorted(p for p in train | test if '/airplane/' in p and p not in removed)]
    by_index, _ = split_per_class([0] * len(names))  # the index rule on what is left: a test sample moves
    assert {names[i] for i in by_index} != {os.path.basename(p) for p in train2 if '/airplane/' in p}
