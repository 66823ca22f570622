"""What a dataset is made of, so that a resumed run notices when its data changed since the checkpoint."""
import hashlib
import os
from typing import Any, Dict, Optional

from torch.utils.data import Subset

__all__ = ["dataset_fingerprint", "describe_data_change"]


def dataset_fingerprint(ds) -> Dict[str, Any]:
    """``{"size": samples, "files": digest}``: ``files`` hashes the samples' paths (relative to the dataset
    folder, so a moved folder is the same data) and labels, in dataset order; None for data without files."""
    indices, base = None, ds
    while isinstance(base, Subset):  # e.g. the CIFAR10-DVS split: the files of the selected samples
        ids = list(base.indices)
        indices = ids if indices is None else [ids[i] for i in indices]
        base = base.dataset
    samples = getattr(base, "samples", None)
    if not isinstance(samples, list) or not samples:
        return {"size": len(ds), "files": None}
    root = os.fspath(getattr(base, "root", "") or "")
    digest = hashlib.sha256()
    for i in indices if indices is not None else range(len(samples)):
        path, target = samples[i][0], samples[i][1]
        rel = os.path.relpath(path, root) if root else os.fspath(path)
        digest.update(f"{rel}\t{int(target)}\n".encode())
    return {"size": len(ds), "files": digest.hexdigest()[:16]}


def describe_data_change(saved: Optional[Dict[str, Any]], now: Dict[str, Any]) -> Optional[str]:
    """How ``now`` differs from ``saved`` (both :func:`dataset_fingerprint`), e.g. "24 -> 22 samples"; None when
    they agree or ``saved`` is unknown (a checkpoint of an older version)."""
    if not saved:
        return None
    if saved.get("size") != now.get("size"):
        return f"{saved.get('size')} -> {now.get('size')} samples"
    if saved.get("files") and now.get("files") and saved["files"] != now["files"]:
        return f"the same number of samples ({now['size']}), other files or labels"
    return None
