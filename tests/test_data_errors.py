"""The dataset table, and what happens with bad data files: named, never skipped, never executed."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10

from models.common import DATA_CFG
from tests.test_data import make_cfg, write_cifar10, write_cifar10dvs, write_imagefolder
from utils import data as data_lib
from utils.data import (DATASETS, BadSampleError, CifarUnpickler, DatasetError, DatasetSpec, create_datasets,
                        dataset_info, expected_tree)


def load(cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tiny subsets warn that counts differ from the official ones
        return create_datasets(cfg, **kw)


# ---------------------------------------------------------------- one table

def test_every_dataset_is_one_complete_table_entry():
    assert set(DATASETS) == {'digits', 'synthetic', 'cifar10', 'cifar100', 'cifar10dvs', 'dvsgesture', 'imagenet'}
    for name, spec in DATASETS.items():
        info = dataset_info(name)
        assert info['name'] == name and info['num_classes'] >= 2 and info['kind'] in ('image', 'event')
        assert (spec.mean is None) == (spec.std is None)
        if spec.mean is not None:
            assert len(spec.mean) == spec.in_channels
        assert bool(spec.tree) == bool(spec.prepare) and bool(spec.tree) != bool(spec.note)
        for alias in spec.aliases:
            assert dataset_info(alias)['name'] == name
    # the data table and the models' pretrained configs (neither imports the other) hold the same statistics
    for dataset, data in (('cifar10', 'cifar'), ('imagenet', 'imagenet')):
        for key in ('mean', 'std'):
            assert tuple(dataset_info(dataset)[key]) == tuple(DATA_CFG[data][key])


def test_a_new_dataset_is_one_table_entry_plus_its_loader(tmp_path, monkeypatch):
    class Squares(torch.utils.data.Dataset):
        classes = ['dark', 'light']

        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return torch.full((1, 8, 8), float(i % 2)), i % 2

    def build(cfg, spec, include_train):
        if not (data_lib.data_root(cfg) / 'squares.txt').is_file():
            raise data_lib.missing_data_error(spec.name, data_lib.data_root(cfg), 'squares.txt not found')
        return (Squares(6) if include_train else None), Squares(4)

    spec = DatasetSpec('squares', build, 2, 1, 'image', 8, (0.5,), (0.5,), 6, 4, tree=('squares.txt',),
                       prepare=('Create it with', '  {cmd}'), aliases=('sq',))
    monkeypatch.setitem(DATASETS, 'squares', spec)
    monkeypatch.setitem(data_lib._ALIASES, 'sq', 'squares')
    with pytest.raises(DatasetError) as e:
        create_datasets(make_cfg(dataset='sq', data_path=str(tmp_path)))
    assert 'squares.txt not found' in str(e.value) and f'{tmp_path}/\n  squares.txt' in str(e.value)
    assert f'python -m utils.tools.prepare_data --dataset squares --data-dir {tmp_path}' in str(e.value)
    (tmp_path / 'squares.txt').write_text('')
    train, val = create_datasets(make_cfg(dataset='squares', data_path=str(tmp_path)))
    assert (len(train), len(val)) == (6, 4) and dataset_info('sq')['in_channels'] == 1
    assert expected_tree('squares', '/d') == '/d/\n  squares.txt'
    with pytest.raises(DatasetError, match='num_classes=1 but squares has 2 classes'):
        create_datasets(make_cfg(dataset='squares', data_path=str(tmp_path), num_classes=1))


def test_num_classes_is_checked_against_the_data(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DatasetError, match=r'num_classes=3 but cifar10 has 10 classes.*at least 10'):
        load(make_cfg(dataset='cifar10', data_path=str(tmp_path), num_classes=3))
    assert len(load(make_cfg(dataset='cifar10', data_path=str(tmp_path), num_classes=10))[1]) == 4
    assert len(load(make_cfg(dataset='cifar10', data_path=str(tmp_path), num_classes=None))[1]) == 4
    # a 2-class ImageFolder subset trains with num_classes 2; the check counts the class folders
    write_imagefolder(tmp_path / 'inet')
    load(make_cfg(dataset='imagenet', data_path=str(tmp_path / 'inet'), img_size=32, num_classes=2))
    with pytest.raises(DatasetError, match='num_classes=1 but imagenet has 2 classes'):
        load(make_cfg(dataset='imagenet', data_path=str(tmp_path / 'inet'), img_size=32, num_classes=1))
    # synthetic draws its labels from num_classes
    _, val = load(make_cfg(dataset='synthetic', synthetic_size=[4, 50], num_classes=3))
    assert set(val.targets) == {0, 1, 2}


# ---------------------------------------------------------------- CIFAR pickles

class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), 'w')


def test_crafted_cifar_batch_runs_nothing_and_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    target = tmp_path / 'pwned.txt'
    bad = tmp_path / 'cifar-10-batches-py' / 'data_batch_2'
    with open(bad, 'wb') as f:
        pickle.dump({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 1], 'x': _WritesAFile(target)}, f, protocol=2)
    # plain pickle would create the file: the payload is live
    with open(bad, 'rb') as f:
        pickle.load(f).get('x').close()
    assert target.exists()
    target.unlink()
    with pytest.raises(DatasetError) as e:
        load(make_cfg(dataset='cifar10', data_path=str(tmp_path)))
    assert not target.exists()
    msg = str(e.value)
    assert f'{bad} is not a readable CIFAR batch' in msg and 'refused to load io.open' in msg
    assert 'download it again' in msg
    # the eval split alone does not read the train batches
    assert len(load(make_cfg(dataset='cifar10', data_path=str(tmp_path)), include_train=False)[1]) == 4


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_cifar_unpickler_reads_what_the_format_holds(tmp_path, protocol):
    entry = {'batch_label': 'b', 'labels': [1, 2], 'data': np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
             'filenames': [b'a.png', 'b.png']}
    path = tmp_path / 'batch'
    path.write_bytes(pickle.dumps(entry, protocol=protocol))
    with open(path, 'rb') as f:
        got = CifarUnpickler(f, encoding='latin1').load()
    assert np.array_equal(got['data'], entry['data']) and got['labels'] == [1, 2] and got['filenames'][1] == 'b.png'
    # the dataset class is still torchvision's
    train, _ = load(make_cfg(dataset='cifar10', data_path=str(_cifar(tmp_path))))
    assert isinstance(train, CIFAR10) and train.data.shape == (10, 32, 32, 3)


def _cifar(tmp_path):
    root = tmp_path / 'c'
    write_cifar10(root)
    return root


# ---------------------------------------------------------------- unreadable sample files

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def test_unreadable_image_raises_bad_sample_error_naming_the_file(tmp_path):
    write_imagefolder(tmp_path)
    bad = tmp_path / 'val' / 'n01443537' / 'n01443537_1.JPEG'
    _truncate(bad)
    cfg = make_cfg(dataset='imagenet', data_path=str(tmp_path), img_size=32)
    train, val = load(cfg)
    train[3]  # good files still load
    with pytest.raises(BadSampleError) as e:
        val[3]
    assert e.value.path == str(bad) and e.value.index == 3 and isinstance(e.value, DatasetError)
    assert str(bad) in str(e.value) and '--verify-data' in str(e.value)
    # from a DataLoader worker process too: same type, same path, our message without the worker traceback
    with pytest.raises(BadSampleError) as e:
        list(DataLoader(val, batch_size=2, num_workers=1))
    assert e.value.path == str(bad) and e.value.index == 3
    assert str(e.value).startswith(f'cannot read sample file {bad} (index 3)') and 'Traceback' not in str(e.value)
    # the scan at start lists every unreadable file before any training
    _truncate(tmp_path / 'train' / 'n01440764' / 'n01440764_0.JPEG')
    with pytest.raises(DatasetError) as e:
        load(make_cfg(dataset='imagenet', data_path=str(tmp_path), img_size=32, verify_data=True, workers=2))
    msg = str(e.value)
    assert msg.startswith('2 unreadable sample file(s):') and str(bad) in msg and 'n01440764_0.JPEG' in msg


def test_corrupt_event_file_names_the_file(tmp_path):
    T = 2
    write_cifar10dvs(tmp_path, T, per_class=lambda c: 2)
    bad = tmp_path / f'frames_number_{T}_split_by_number' / 'bird' / 'cifar10_bird_1.npz'
    np.savez(bad, frames=np.array([{'a': 1}], dtype=object))  # pickled data: numpy refuses it without allow_pickle
    train, test = load(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path), T=T))
    full = test.dataset
    index = next(i for i, (p, _) in enumerate(full.samples) if p == str(bad))
    with pytest.raises(BadSampleError) as e:
        full[index]
    assert e.value.path == str(bad) and 'Object arrays cannot be loaded' in str(e.value)
    with pytest.raises(DatasetError, match=r'1 unreadable sample file\(s\):\n  .*cifar10_bird_1.npz'):
        load(make_cfg(dataset='cifar10dvs', data_path=str(tmp_path), T=T, verify_data=True))
    # a truncated archive is named too
    bad.write_bytes(b'PK\x03\x04broken')
    with pytest.raises(BadSampleError, match='cifar10_bird_1.npz'):
        full[index]


def test_docs_page_lists_every_dataset_and_data_key():
    import os

    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'data.md')).read()
    for key in data_lib.DATA_OPTIONS:
        assert f'| `{key}` |' in text, key
    for name, spec in DATASETS.items():
        assert f'`{name}`' in text, name
        for alias in spec.aliases:
            assert f'`{alias}`' in text, alias


def test_prepare_data_verify_lists_unreadable_images(tmp_path, capsys):
    from utils.tools import prepare_data

    write_imagefolder(tmp_path)
    bad = tmp_path / 'train' / 'n01440764' / 'n01440764_1.JPEG'
    _truncate(bad)
    assert prepare_data.main(['--dataset', 'imagenet', '--root', str(tmp_path)]) == 1  # 2 classes, not 1000
    assert str(bad) not in capsys.readouterr().out  # without --verify the files are not read
    assert prepare_data.main(['--dataset', 'imagenet', '--root', str(tmp_path), '--verify']) == 1
    out = capsys.readouterr().out
    assert '1 unreadable sample file(s):' in out and str(bad) in out


def test_only_datasets_of_files_warn_about_official_sizes():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        create_datasets(make_cfg(dataset='synthetic', synthetic_size=[8, 4]))
