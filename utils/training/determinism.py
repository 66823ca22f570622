"""The reproducibility switch (config key ``deterministic``) and the speed settings it trades against.

``deterministic: true``: deterministic algorithms, no cuDNN autotuning, full fp32 (IEEE) matmuls and
convolutions: a resumed run replays bit-exactly. ``false``: cuDNN autotuning, and TF32 for fp32
matmuls and convolutions on CUDA (about 8x the fp32 matmul rate on Ampere and newer, ~1e-3 relative error
per product). ``null`` (the default, "auto"): deterministic on the CPU, where it costs nothing, fast on CUDA.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["resolve_deterministic", "apply_determinism"]


def resolve_deterministic(value: Optional[bool], device: "torch.device | str") -> bool:
    """``value`` if set, else True on the CPU and False on CUDA."""
    if value is not None:
        return bool(value)
    return torch.device(device).type != "cuda"


def apply_determinism(deterministic: bool) -> None:
    """Set torch's global algorithm, autotuning and fp32-precision flags for ``deterministic``."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        # deterministic mode also NaN-fills every new tensor (a debugging aid for reads of uninitialised
        # memory, ~3 % of a training step on CPU); the results do not depend on it
        torch.utils.deterministic.fill_uninitialized_memory = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    # the allow_tf32 flags (not fp32_precision): torch.compile's Inductor reads these, and mixing the two
    # APIs makes such reads raise
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
