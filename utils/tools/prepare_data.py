"""Prepare and check datasets:
``python -m utils.tools.prepare_data --dataset NAME --data-dir DIR [--T 16] [--download]``.

* cifar10dvs / dvsgesture: convert the raw recordings into spikingjelly frames
  (``frames_number_<T>_split_by_number``, split by number of events) with spikingjelly's own dataset classes, then
  check the sample counts (CIFAR10-DVS 10,000 = 1,000 per class; DVS128 Gesture 1,176 train / 288 test).
  ``--download`` fetches CIFAR10-DVS from figshare; DVS128 Gesture must be downloaded by hand.
* cifar10 / cifar100: ``--download`` fetches the python version with torchvision; ``--verify`` checks md5 sums.
* ``--verify`` on the other datasets reads every sample file once and lists the unreadable ones.
* imagenet (and any other dataset of folders): checks the layout and the counts against the dataset table
  (``utils.data.DATASETS``).

Exit status 0 when the dataset is complete, 1 when something is missing or wrong (the report says what).
"""
import argparse
import math
import sys
import warnings
from pathlib import Path

from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity, download_url

from utils.config.cli import Parser, positive_int
from utils.data import (CIFAR10DVS_TRAIN_RATIO, CIFAR10DVS_URL, DATA_DEFAULTS, DATASETS, GESTURE_FILES, GESTURE_URL,
                        CIFAR10Files, CIFAR100Files, DatasetError, canonical_name, create_datasets, dataset_info,
                        expected_tree, frames_dir)
from utils.io.paths import writable_folder_problem

CIFAR10DVS_PER_CLASS = 1000
GESTURE_COUNTS = {'train': 1176, 'test': 288}


def _count_files(folder: Path) -> int:
    return sum(1 for _ in folder.glob('*.np[yz]')) if folder.is_dir() else 0


def frame_counts(name: str, root: Path, T: int) -> dict:
    """Number of frame files per class folder (CIFAR10-DVS) or per split and class (Gesture)."""
    frames = frames_dir(root, T)
    if name == 'cifar10dvs':
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES  # lazy: spikingjelly.datasets 0.5 s
        return {c: _count_files(frames / c) for c in CIFAR10DVS_CLASS_NAMES}
    return {f'{split}/{c}': _count_files(frames / split / str(c)) for split in ('train', 'test') for c in range(11)}


def check_event_counts(name: str, root: Path, T: int) -> list:
    """Problems with the frame counts (empty list = complete)."""
    counts = frame_counts(name, root, T)
    problems = []
    if name == 'cifar10dvs':
        for c, n in counts.items():
            if n != CIFAR10DVS_PER_CLASS:
                problems.append(f'class {c}: {n} samples, expected {CIFAR10DVS_PER_CLASS}')
        total = sum(counts.values())
        n_train = sum(math.ceil(n * CIFAR10DVS_TRAIN_RATIO) for n in counts.values())
        print(f'CIFAR10-DVS frames: {total} samples (expected 10000); published 9:1 split -> '
              f'{n_train} train / {total - n_train} test')
    else:
        for split, expected in GESTURE_COUNTS.items():
            got = sum(n for k, n in counts.items() if k.startswith(split + '/'))
            print(f'DVS128 Gesture {split}: {got} samples (expected {expected})')
            if got != expected:
                problems.append(f'{split}: {got} samples, expected {expected}')
    return problems


def _raw_available(name: str, root: Path) -> bool:
    if (root / 'events_np').is_dir() or (root / 'extract').is_dir():
        return True
    if name == 'cifar10dvs':
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES  # lazy: spikingjelly.datasets 0.5 s
        return all((root / 'download' / f'{c}.zip').is_file() for c in CIFAR10DVS_CLASS_NAMES)
    return all((root / 'download' / f).is_file() for f in GESTURE_FILES)


def download_cifar10dvs(root: Path) -> str:
    """Fetch CIFAR10-DVS's class archives into ``root/download``, each checked against its md5 sum.

    Returns '' when all are there, else the reason (URL and error). A failed or interrupted file is deleted,
    and so are the folders this call created while they are still empty: nothing partial stays behind.
    """
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS  # lazy: spikingjelly.datasets 0.5 s

    target = root / 'download'
    created = [p for p in (*reversed(target.parents), target) if not p.exists()]  # outermost first
    target.mkdir(parents=True, exist_ok=True)
    for fname, url, md5 in CIFAR10DVS.resource_url_md5():
        path = target / fname
        if check_integrity(str(path), md5):
            continue
        try:
            download_url(url, str(target), fname, md5)
        except BaseException as e:  # network down, disk full, md5 mismatch, Ctrl-C: keep nothing partial
            path.unlink(missing_ok=True)
            for folder in reversed(created):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not isinstance(e, Exception):
                raise
            return f'Download of {fname} from {url} into {target} failed: {type(e).__name__}: {e}'
    return ''


def prepare_events(name: str, root: Path, T: int, download: bool, verify: bool = False) -> int:
    frames = frames_dir(root, T)
    stale = [p for p in (frames.with_name(frames.name + '.building'), root / 'events_np.building') if p.exists()]
    if stale:
        print(f'A previous conversion was interrupted (found {", ".join(str(p) for p in stale)}).\n'
              f'Delete {frames}, {root / "events_np"} and the .building markers, then rerun this command.')
        return 1
    if not frames.is_dir():
        if not _raw_available(name, root):
            if name == 'cifar10dvs' and download:
                print(f'Downloading CIFAR10-DVS (10 class zips, several GB, from figshare) '
                      f'into {root / "download"} ...')
                problem = download_cifar10dvs(root)
                if problem:
                    print(f'\n{problem}\nNo network here? Download airplane.zip ... truck.zip from {CIFAR10DVS_URL} '
                          f'on a machine that has it, put them in {root / "download"}, and rerun without --download.')
                    return 1
            else:
                print(f'{name}: no frames for T={T} and no raw recordings in {root}.\n\nExpected layout:\n'
                      f'{expected_tree(name, root, T)}\n')
                if name == 'cifar10dvs':
                    print(f'Rerun with --download, or put airplane.zip ... truck.zip from {CIFAR10DVS_URL} '
                          f'in {root / "download"}.')
                else:
                    missing = [f for f in GESTURE_FILES if not (root / 'download' / f).is_file()]
                    print(f'Download {", ".join(missing)} from {GESTURE_URL} into {root / "download"} and rerun.')
                return 1
        print(f'Converting {name} events into {T} frames per sample (split by number) under {frames} ...')
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS  # lazy: spikingjelly.datasets 0.5 s
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture
        kw = dict(data_type='frame', frames_number=T, split_by='number')
        before = set(root.iterdir())
        try:
            if name == 'cifar10dvs':
                CIFAR10DVS(str(root), **kw)
            else:
                DVS128Gesture(str(root), train=True, **kw)
        except Exception as e:  # corrupt archive, disk full: report it, not a traceback
            partial = sorted(str(p) for p in set(root.iterdir()) - before if p.name != 'download')
            print(f'\nspikingjelly failed while preparing {name}: {type(e).__name__}: {e}\n'
                  + (f'It left these partial entries: {", ".join(partial)}.\nFix the cause, delete them (keep '
                     f'{root / "download"}: the archives in it are checked on every run), then rerun this command.'
                     if partial else f'It left nothing new in {root}. Fix the cause, then rerun this command.'))
            return 1
    else:
        print(f'Frames already present in {frames}; checking them.')
    problems = check_event_counts(name, root, T)
    if not problems:
        try:  # the loader used by train.py must read them too
            cfg = argparse.Namespace(**{**DATA_DEFAULTS, "dataset": name, "data_path": str(root), "T": T,
                                        "event_augment": False, "verify_data": verify})
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # counts were reported above
                train_set, eval_set = create_datasets(cfg)
            x, y = eval_set[0]
            if tuple(x.shape) != (T, 2, 128, 128):
                problems.append(f'frames have shape {tuple(x.shape)}, expected {(T, 2, 128, 128)}')
        except DatasetError as e:
            problems.append(str(e))
    return _report(name, root, problems)


def _load_quietly(name: str, root: Path, verify: bool):
    """Both splits of ``name`` under ``root`` (``verify``: every sample file read once); count warnings are
    silenced because the callers report the counts themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return create_datasets(argparse.Namespace(**{**DATA_DEFAULTS, "dataset": name, "data_path": str(root),
                                                     "verify_data": verify}))


def prepare_cifar(name: str, root: Path, download: bool, verify: bool) -> int:
    cls = {'cifar10': CIFAR10, 'cifar100': CIFAR100}[name]  # the official md5 sums
    if download:
        try:  # torchvision's download (archive md5 checked); the batches are then read without running code
            {'cifar10': CIFAR10Files, 'cifar100': CIFAR100Files}[name](str(root), train=True, download=True)
        except Exception as e:  # network or disk problem
            print(f'Download of {name} into {root} failed: {type(e).__name__}: {e}')
            return 1
    problems = []
    try:
        train_set, eval_set = _load_quietly(name, root, verify)
        info = dataset_info(name)
        print(f'{name}: {len(train_set)} train / {len(eval_set)} test samples '
              f'(expected {info["train_size"]} / {info["eval_size"]})')
        if (len(train_set), len(eval_set)) != (info['train_size'], info['eval_size']):
            problems.append('sample counts differ from the official dataset')
    except DatasetError as e:
        problems.append(str(e))
    if verify and not problems:
        for fname, md5 in cls.train_list + cls.test_list + [[cls.meta['filename'], cls.meta['md5']]]:
            if not check_integrity(str(root / cls.base_folder / fname), md5):
                problems.append(f'{cls.base_folder}/{fname}: md5 differs from the official file')
    return _report(name, root, problems)


def prepare_folders(name: str, root: Path, verify: bool = False) -> int:
    """Check a dataset of class folders (ImageNet): layout, class count, sample counts (``verify``: every file)."""
    spec = DATASETS[name]
    problems = []
    try:
        train_set, eval_set = _load_quietly(name, root, verify)
        print(f'{name}: {len(train_set.classes)} classes, {len(train_set)} train / {len(eval_set)} '
              f'{spec.eval_split} samples (expected {spec.num_classes} classes, {spec.train_size} / {spec.eval_size})')
        if len(train_set.classes) != spec.num_classes:
            problems.append(f'{len(train_set.classes)} class folders, expected {spec.num_classes}')
    except DatasetError as e:
        problems.append(str(e))
    return _report(name, root, problems)


def _report(name: str, root: Path, problems: list) -> int:
    if problems:
        print(f'\n{name} in {root} is NOT ready:')
        for p in problems:
            print('  - ' + p.replace('\n', '\n    '))
        return 1
    print(f'\n{name} in {root} is ready.')
    return 0


DOWNLOADABLE = ('cifar10', 'cifar100', 'cifar10dvs')  # what --download fetches; the others come by hand


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m utils.tools.prepare_data``."""
    parser = Parser(prog='python -m utils.tools.prepare_data', description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True,
                        choices=[name for name, spec in DATASETS.items() if spec.tree])
    parser.add_argument('--data-dir', '--data-path', dest='root', default=None, metavar='DIR',
                        help='dataset folder (the data_path of the config); required')
    parser.add_alias('--root', of='--data-dir')
    parser.add_argument('-T', '--T', type=positive_int, default=None,
                        help='frames per event sample (= model time steps; default 16); event datasets only')
    parser.add_bool('--download', help='download first (CIFAR-10/100, CIFAR10-DVS)')
    parser.add_bool('--verify', help='CIFAR: also check the official md5 sums; other datasets: read every sample '
                                     'file and list the unreadable ones')
    parser.add_alias('--verify-data', of='--verify')
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.root is None:
        parser.error('--data-dir DIR is required: the dataset folder (the data_path of the config)')
    problem = writable_folder_problem(args.root, '--data-dir') if args.download else None
    if problem:
        parser.error(problem)
    name = canonical_name(args.dataset)
    root = Path(args.root).expanduser().resolve()
    if args.download and name not in DOWNLOADABLE:
        parser.error(f'--download fetches {", ".join(DOWNLOADABLE)}; {name} is downloaded by hand (docs/data.md): '
                     f'leave --download out')
    if args.T is not None and DATASETS[name].kind != 'event':
        parser.error(f'--T sets the frames per event sample; {name} holds images: leave --T out')
    if DATASETS[name].kind == 'event':
        return prepare_events(name, root, args.T or 16, args.download, args.verify)
    if name in ('cifar10', 'cifar100'):
        return prepare_cifar(name, root, args.download, args.verify)
    return prepare_folders(name, root, args.verify)


if __name__ == '__main__':
    from utils.config.cli import run_main

    sys.exit(run_main(main))
