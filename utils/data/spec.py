"""What the repository knows about one dataset (:class:`DatasetSpec`), and the messages made from it.

An entry of the table (``utils.data.table.DATASETS``) is one ``DatasetSpec``; its ``build`` function (one per
dataset family: ``digits``, ``synthetic``, ``cifar``, ``imagefolder``, ``events``) receives the config and the
spec, and reports missing data with ``spec.missing_error``.
"""
import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Tuple

from torch.utils.data import Dataset

from .files import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[2]

Splits = Tuple[Optional[Dataset], Dataset]  # what a builder returns: (train set or None, eval set)


def prepare_cmd(name: str, root, T: Optional[int] = None, download: bool = False) -> str:
    """The ``utils.tools.prepare_data`` command that prepares ``name`` in ``root``."""
    cmd = f"python -m utils.tools.prepare_data --dataset {name} --data-dir {root}"
    if T is not None:
        cmd += f" --T {T}"
    if download:
        cmd += " --download"
    return cmd


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the repo knows about one dataset. ``build(cfg, spec, include_train) -> (train, eval)``.

    ``tree`` lines describe the folder under ``data_path`` (``{frames}`` = the frames folder for ``T``);
    ``prepare`` lines say how to get there (``{cmd}`` / ``{cmd_download}`` = the ``utils.tools.prepare_data`` command,
    ``{root}`` = the folder). Both appear in errors and in docs/data.md.
    """

    name: str
    build: Callable
    num_classes: int
    in_channels: int
    kind: str                       # 'image' | 'event'
    img_size: int                   # native input size
    mean: Optional[Tuple[float, ...]]
    std: Optional[Tuple[float, ...]]
    train_size: int                 # official sample counts (CIFAR10-DVS: the published 9:1 split)
    eval_size: int
    eval_split: str = "test"
    tree: Tuple[str, ...] = ()
    prepare: Tuple[str, ...] = ()
    aliases: Tuple[str, ...] = ()
    note: str = ""                  # for datasets without files: where the samples come from

    def info(self) -> dict:
        """``dict(num_classes, in_channels, kind, img_size, mean, std, train_size, eval_size, name)``."""
        return dict(num_classes=self.num_classes, in_channels=self.in_channels, kind=self.kind,
                    img_size=self.img_size, mean=self.mean, std=self.std, train_size=self.train_size,
                    eval_size=self.eval_size, name=self.name)

    def root(self, cfg) -> Path:
        """Resolved dataset folder: ``cfg.data_path`` or ``<repo>/data/<name>``."""
        path = cfg.data_path
        if path in (None, ""):
            return REPO_ROOT / "data" / self.name
        return Path(os.path.expanduser(str(path))).resolve()

    def expected_tree(self, root, T: int = 16) -> str:
        """The folder tree the dataset must have under ``root`` (a string for messages and docs)."""
        if not self.tree:
            return f"{root}  (nothing: {self.name} is {self.note})"
        frames = f"frames_number_{T}_split_by_number"
        return "\n".join([f"{root}/"] + ["  " + line.format(frames=frames, T=T) for line in self.tree])

    def prepare_text(self, root, T: int = 16) -> str:
        """How to prepare the dataset in ``root`` (the lines of the error message after the folder tree)."""
        T_ = T if self.kind == "event" else None
        folder = self.tree[0].rstrip("/") if self.tree else ""
        return "\n".join(line.format(root=root, folder=folder, cmd=prepare_cmd(self.name, root, T_),
                                     cmd_download=prepare_cmd(self.name, root, T_, download=True))
                         for line in self.prepare)

    def missing_error(self, root, problem: str, T: int = 16) -> DatasetError:
        """``DatasetError``: the problem, the expected folder tree and how to prepare it."""
        return DatasetError("\n".join([f"{self.name}: {problem}", "", "Expected layout:",
                                       self.expected_tree(root, T), "", self.prepare_text(root, T)]))
