"""Every data key of a config (:data:`DATA_OPTIONS`: YAML key and ``--flag``) and their defaults."""
from typing import Dict

from ..options import Option

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

# Every data key of a config (YAML key and --flag). ``None`` defaults mean "the dataset's own value".
DATA_OPTIONS: Dict[str, Option] = {
    "dataset": Option("digits", str, "dataset name or alias: digits | synthetic | cifar10 | cifar100 | cifar10dvs | "
                      "dvsgesture | imagenet (see docs/data.md)"),
    "data_path": Option(None, str, "dataset folder (null = <repo>/data/<dataset>); in a YAML file relative to that "
                        "file's folder, on the command line to the current folder", flags=("--data-dir",)),
    "download": Option(False, bool, "download the dataset if missing (CIFAR-10/100 only, via torchvision)"),
    "verify_data": Option(False, bool, "read every sample file once at start and list all unreadable ones "
                          "(ImageNet / event frames; costs one pass over the files)"),
    "img_size": Option(None, int, "input size (null = native: digits/CIFAR 32, events 128, ImageNet 224)", low=1),
    "mean": Option(None, list, "normalisation mean per channel, e.g. [0.5, 0.5, 0.5] (null = the dataset's)"),
    "std": Option(None, list, "normalisation std per channel, each > 0 (null = the dataset's)"),
    "crop_pct": Option(None, float, "eval Resize(img_size / crop_pct) + CenterCrop (null = 1.0; ImageNet at "
                       "<= 224: 0.875)", low=1e-6, high=1.0),
    "interpolation": Option("bicubic", str, "eval resize interpolation", choices=_INTERPOLATIONS),
    "train_interpolation": Option("bicubic", str, "train crop interpolation ('random' = bilinear or bicubic)",
                                  choices=_INTERPOLATIONS + ("random",)),
    "scale": Option([0.08, 1.0], list, "RandomResizedCrop area range [min, max]; [1, 1] with ratio [1, 1] is the "
                    "identity", low=0.0, length=2),
    "ratio": Option([3. / 4., 4. / 3.], list, "RandomResizedCrop aspect-ratio range [min, max]", low=1e-6, length=2),
    "hflip": Option(0.5, float, "horizontal-flip probability (images and event frames)", low=0.0, high=1.0),
    "color_jitter": Option(0.4, float, "colour jitter strength (ImageNet only; ignored when aa is set, as in timm)",
                           low=0.0),
    "aa": Option(None, str, "RandAugment policy, e.g. 'rand-m9-n1-mstd0.4-inc1' (CIFAR: reduced op set) or "
                 "'rand-m9-mstd0.5-inc1' (null = off)"),
    "reprob": Option(0.0, float, "random-erasing probability (after normalisation)", low=0.0, high=1.0),
    "remode": Option("pixel", str, "random-erasing fill: 'const' (published CIFAR) | 'pixel' (ImageNet) | 'rand'",
                     choices=("const", "pixel", "rand")),
    "recount": Option(1, int, "random-erasing boxes per image", low=1),
    "synthetic_size": Option([5000, 1000], list, "synthetic only: [train, eval] number of random samples",
                             low=1, length=2),
    "digits_augment": Option(False, bool, "digits only: light random affine (+-10 deg, +-10% shift, 0.9-1.1 scale)"),
    "event_augment": Option(True, bool, "events only: hflip + EventTrivialAugment on training samples"),
    "T": Option(4, int, "model time steps (model attribute .T); event data: also the frames per sample", flags=("-T",),
                low=1),
    "num_classes": Option(None, int, "number of classes, >= the dataset's (default: from the dataset)", low=1),
    "mixup": Option(0.0, float, "mixup alpha (0 = off)", low=0.0),
    "cutmix": Option(0.0, float, "cutmix alpha (0 = off)", low=0.0),
    "cutmix_minmax": Option(None, list, "cutmix box area range [min, max] as fractions (null = from cutmix alpha)",
                            low=0.0, high=1.0, length=2),
    "mixup_prob": Option(1.0, float, "probability of mixing a batch", low=0.0, high=1.0),
    "mixup_switch_prob": Option(0.5, float, "probability of cutmix instead of mixup when both are on",
                                low=0.0, high=1.0),
    "mixup_mode": Option("batch", str, "mix per batch, pair or element", choices=("batch", "pair", "elem")),
    "mixup_off_epoch": Option(0, int, "turn mixup/cutmix off from this epoch (targets stay smoothed); 0 = never",
                              low=0),
    "smoothing": Option(0.1, float, "label smoothing of the targets (0 = one-hot)", low=0.0, high=0.999),
    "workers": Option(None, int, "DataLoader worker processes per training process (0 = load in the main process; "
                      "null = auto: the CPU cores per process on CUDA, at most 4 on CPU)", flags=("-j",), low=0),
    "pin_memory": Option(True, bool, "page-locked batches for faster host-to-GPU copies", flags=("--pin-mem",)),
}
DATA_DEFAULTS = {k: o.default for k, o in DATA_OPTIONS.items()}

