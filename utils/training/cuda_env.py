"""Whether this machine can run CUDA with the installed torch build, and why not: the NVIDIA driver, its CUDA
version, the GPU architectures the build has kernels for. Used by device selection (utils.training.distributed) and the
preflight checklist (utils.tools.doctor)."""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional, Sequence, Tuple

import torch

# Oldest Linux driver of each CUDA major version (NVIDIA's CUDA toolkit release notes).
_MIN_DRIVER = {11: "450", 12: "525", 13: "580"}
CPU_HINT = "to run on the CPU anyway pass --device cpu"


def driver_cuda_version() -> Optional[Tuple[int, int]]:
    """The CUDA version the installed NVIDIA driver supports, e.g. ``(13, 0)``; None without a driver."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so", "libcuda.dylib")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return version.value // 1000, (version.value % 1000) // 10
    return None


def build_cuda_version() -> Optional[Tuple[int, int]]:
    if not torch.version.cuda:
        return None
    major, minor = (torch.version.cuda.split(".") + ["0"])[:2]
    return int(major), int(minor)


def arch_supported(capability: Tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a build with kernels for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on a GPU of
    ``capability``: a binary for sm_XY runs on the same major X with minor >= Y; PTX (compute_XY) on any
    capability >= XY."""
    cap = capability[0] * 10 + capability[1]
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        if not num.isdigit():
            continue
        n = int(num)
        if kind == "sm" and n // 10 == capability[0] and n <= cap:
            return True
        if kind == "compute" and n <= cap:
            return True
    return False


def sm_name(capability: Tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def driver_fix(build: Tuple[int, int]) -> str:
    need = _MIN_DRIVER.get(build[0])
    return (f"install an NVIDIA driver for CUDA {build[0]}.x" + (f" ({need} or newer)" if need else "")
            + f", or a torch build for your driver's CUDA version; {CPU_HINT}")


def cuda_problem(index: Optional[int] = None) -> Optional[str]:
    """Why this machine cannot run CUDA with this torch build (with the fix), or None when it can.

    ``index``: the GPU the run will use (default: any visible one must be usable).
    """
    build = build_cuda_version()
    if build is None:
        return (f"torch {torch.__version__} is built without CUDA; install a CUDA build of torch "
                f"(pip install -r requirements.txt on Linux x86-64); {CPU_HINT}")
    driver = driver_cuda_version()
    if driver is None:
        return f"no NVIDIA driver found (libcuda cannot be loaded); {driver_fix(build)}"
    if driver[0] < build[0]:
        return (f"the NVIDIA driver is too old for this build: it supports CUDA {driver[0]}.{driver[1]}, torch "
                f"{torch.__version__} needs CUDA {build[0]}.x; {driver_fix(build)}")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"no CUDA device is visible{where}; check nvidia-smi and CUDA_VISIBLE_DEVICES; {CPU_HINT}"
    indices = [index % torch.cuda.device_count()] if index is not None else range(torch.cuda.device_count())
    arches = torch.cuda.get_arch_list()
    for i in indices:
        cap = torch.cuda.get_device_capability(i)
        if not arch_supported(cap, arches):
            return (f"GPU {i} ({torch.cuda.get_device_name(i)}) is architecture {sm_name(cap)}, which torch "
                    f"{torch.__version__} does not support (it has kernels for {' '.join(arches)}); use a "
                    f"supported GPU or a torch build for {sm_name(cap)}; {CPU_HINT}")
    return None


def wants_cuda(device: str) -> bool:
    """Whether a run with ``device`` (auto | cpu | cuda | cuda:N) will use a GPU on this machine."""
    device = (device or "auto").lower()
    return device.startswith("cuda") or (device == "auto" and cuda_problem() is None)
