"""Preflight: can this machine start this run? ``python -m utils.tools.doctor [-c CONFIG] [--key value ...]``.

Prints one line per check (PASS / WARN / FAIL; every FAIL names the fix) and exits 0 only if the run can
start: the torch build and its CUDA version; the NVIDIA driver (present, new enough for the build); each
visible GPU, its architecture and whether the build has kernels for it; free device memory against the
run's memory plan; the C compiler and Python headers that Triton and ``torch.compile`` build with; the
neuron kernel spikingjelly will run; the data folder. ``train.py`` runs the cheap checks
(:func:`cheap_checks`) before it writes anything, and :func:`cuda_problem` decides whether a run that asks
for CUDA may start.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import sysconfig
from typing import List, Optional, Sequence

import torch

from utils.training import cuda_env, memory_plan
from utils.training.cuda_env import (arch_supported, build_cuda_version, cuda_problem, driver_cuda_version,
                            driver_fix, sm_name, wants_cuda)

__all__ = ["Check", "cuda_problem", "driver_cuda_version", "arch_supported", "wants_cuda", "neuron_kernel",
           "cheap_checks", "run_checks", "main"]


@dataclasses.dataclass
class Check:
    """One checklist line: ``status`` is PASS, WARN or FAIL; ``fix`` says what to do (FAIL and WARN)."""

    status: str
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name:<9} {self.detail}"
        return text + (f"\n{'':16}fix: {self.fix}" if self.fix else "")


# ------------------------------------------------------------------------------------------- checks
def _check_torch(cuda: bool) -> Check:
    build = build_cuda_version()
    if build is None:
        return Check("FAIL" if cuda else "PASS", "torch", f"{torch.__version__}, built without CUDA",
                     cuda_problem() if cuda else "")
    return Check("PASS", "torch", f"{torch.__version__}, CUDA {torch.version.cuda} build, kernels for "
                 f"{' '.join(torch.cuda.get_arch_list())}")


def _check_driver(cuda: bool) -> Check:
    build, driver = build_cuda_version(), cuda_env.driver_cuda_version()
    if build is None:
        return Check("PASS", "driver", "not needed: torch is built without CUDA")
    if driver is None:
        if not cuda:
            return Check("PASS", "driver", "none found (not needed: the run uses the CPU)")
        return Check("FAIL", "driver", "no NVIDIA driver found (libcuda cannot be loaded)", driver_fix(build))
    text = f"supports CUDA {driver[0]}.{driver[1]}; this build needs {build[0]}.x"
    if driver[0] < build[0]:
        return Check("FAIL" if cuda else "WARN", "driver", "too old: " + text, driver_fix(build))
    return Check("PASS", "driver", text)


def _check_gpus(cuda: bool, index: Optional[int]) -> List[Check]:
    if build_cuda_version() is None or cuda_env.driver_cuda_version() is None:
        return [Check("FAIL", "gpu", "no usable CUDA device (see the lines above)") if cuda else
                Check("PASS", "gpu", "none (not needed: the run uses the CPU)")]
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        problem = cuda_problem() or ""
        return [Check("FAIL" if cuda else "WARN", "gpu", "no CUDA device visible", problem)]
    out, arches = [], torch.cuda.get_arch_list()
    for i in range(torch.cuda.device_count()):
        props, cap = torch.cuda.get_device_properties(i), torch.cuda.get_device_capability(i)
        text = f"{i}: {props.name}, {sm_name(cap)}, {props.total_memory / 2**30:.1f} GiB"
        if arch_supported(cap, arches):
            out.append(Check("PASS", "gpu", text + ", supported by this build"))
        else:
            used = cuda and (index is None or i == index % torch.cuda.device_count())
            out.append(Check("FAIL" if used else "WARN", "gpu", text + ", NOT supported by this build",
                             cuda_problem(i) or ""))
    return out


def _check_memory(cfg, cuda: bool, index: int) -> Check:
    """The plan against free GPU memory, by the same rule as train.py's warning (:func:`memory_plan.fits`)."""
    try:
        planned = int(memory_plan.plan_memory(cfg))
    except Exception as err:  # the plan is advice: report it, never stop the checklist
        return Check("WARN", "memory", f"memory plan failed: {type(err).__name__}: {err}")
    text = f"plan {planned / 2**30:.1f} GiB per process"
    if not (cuda and cuda_problem(index) is None):
        return Check("PASS", "memory", text + " (not checked against a GPU)")
    free, total = torch.cuda.mem_get_info(index)
    text += f", free {free / 2**30:.1f} of {total / 2**30:.1f} GiB on cuda:{index}"
    if not memory_plan.fits(planned, free):
        return Check("FAIL", "memory", text, "lower --batch-size (with --accum-steps to keep the effective batch), "
                     "or --grad-checkpointing true, or --compact-spikes true; see python benchmark.py --plan-memory")
    return Check("PASS", "memory", text)


def _c_compiler() -> Optional[str]:
    """The C compiler Triton would use (``$CC``, then cc, gcc, clang), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _check_compiler(cfg, cuda: bool) -> Check:
    """Triton builds a C launcher at its first kernel launch, Inductor (``torch.compile``) C/C++ code."""
    compiles = cfg.fastpath or cfg.compile
    needed = cuda or compiles
    cc = _c_compiler()
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    missing = ([] if cc else ["a C compiler (gcc or clang)"]) + ([] if os.path.isfile(header) else
                                                                 [f"the Python headers ({header})"])
    why = "Triton neurons and torch.compile" if cuda else "torch.compile (fastpath)" if compiles else ""
    if not missing:
        return Check("PASS", "compiler", f"{cc}, {header} ({'needed by ' + why if why else 'not needed by this run'})")
    text = f"missing {' and '.join(missing)}, needed by {why}"
    fix = "install gcc and the Python development headers (apt install gcc python3-dev, or conda install gcc)"
    if not needed:
        return Check("PASS", "compiler", f"missing {' and '.join(missing)} (not needed by this run)")
    if not cuda:  # on CPU utils.training.fastpath switches compilation off with a warning
        return Check("WARN", "compiler", text + "; the run falls back to no compile", fix)
    return Check("FAIL", "compiler", text + "; the first neuron call would fail", fix)


def neuron_kernel(kind: str, device: "torch.device | str", fastpath: bool = False) -> str:
    """The kernel that runs ``kind`` ('lif' / 'if') neurons on ``device``: 'torch' (spikingjelly's CPU
    reference, or the project's PyTorch loop under the fast path), 'triton' or 'cuda' (spikingjelly's own
    selection on a GPU; its compiled CUDA part is absent from the PyPI wheel, so it picks Triton)."""
    device = torch.device(device)
    if fastpath or device.type != "cuda":
        return "torch"
    if cuda_problem(device.index) is None:
        from spikingjelly.activation_based import functional as sj_functional

        return str(sj_functional.neuron_implementation(kind, device)["implementation"])
    import importlib

    for name, module in (("cuda", f"spikingjelly._ops.{'if_' if kind == 'if' else kind}.native"),
                         ("triton", "triton")):
        try:
            importlib.import_module(module)
            return name
        except (ImportError, OSError):
            continue
    return "torch"


def _check_neurons(cfg, device: torch.device) -> Check:
    from spikingjelly.activation_based import neuron as sj_neuron

    from models.neurons import spiking_modules

    try:
        from utils.data import dataset_info
        from utils.training.engine import build_model

        with torch.device("meta"):
            model = build_model(cfg, cfg.num_classes or dataset_info(cfg.dataset)["num_classes"])
    except Exception as err:
        return Check("WARN", "neurons", f"not inspected: model {cfg.model} does not build on the meta device "
                     f"({type(err).__name__}: {err})")
    kinds = sorted({"lif" if isinstance(m, sj_neuron.LIFNode) else "if" for _, m in spiking_modules(model)})
    if not kinds:
        return Check("PASS", "neurons", f"{cfg.model} has no spiking neurons")
    fast = cfg.fastpath
    how = "fastpath: the project's PyTorch loop, compiled" if fast else "spikingjelly's selection"
    names = ", ".join(f"{k}: {neuron_kernel(k, device, fast)}" for k in kinds)
    return Check("PASS", "neurons", f"{names} on {device.type} ({how})")


def _check_data(cfg) -> Check:
    from utils import data as data_lib
    from utils.config import Config, ConfigError

    quiet = Config(**{**vars(cfg), "download": False, "verify_data": False})
    try:
        train_set, eval_set = data_lib.create_datasets(quiet)
    except (data_lib.DatasetError, ConfigError) as err:
        first, _, rest = str(err).partition("\n")
        if cfg.download:
            return Check("WARN", "data", first, "download: true: train.py downloads it at start")
        return Check("FAIL", "data", first, rest.strip().replace("\n", "\n" + " " * 16) or "see docs/data.md")
    spec = data_lib.DATASETS[data_lib.canonical_name(cfg.dataset)]
    where = f"in {data_lib.data_root(cfg)}" if spec.tree else f"({spec.note})"
    return Check("PASS", "data", f"{spec.name} {where}: {len(train_set)} train / {len(eval_set)} eval samples")


def _device_index(cfg) -> int:
    name = cfg.device.lower()
    if ":" in name:
        return int(name.split(":", 1)[1])
    return int(os.environ.get("LOCAL_RANK", "0"))


def cheap_checks(cfg, device: torch.device) -> List[Check]:
    """The checks ``train.py`` runs before it writes anything: torch, driver, GPUs and compiler for ``device``."""
    cuda = torch.device(device).type == "cuda"
    index = torch.device(device).index or 0
    return [_check_torch(cuda), _check_driver(cuda), *_check_gpus(cuda, index), _check_compiler(cfg, cuda)]


def run_checks(cfg) -> List[Check]:
    """Every check for ``cfg`` on this machine."""
    cuda, index = wants_cuda(cfg.device), _device_index(cfg)
    device = torch.device("cuda", index) if cuda else torch.device("cpu")
    checks = cheap_checks(cfg, device)
    return checks + [_check_memory(cfg, cuda, index), _check_neurons(cfg, device), _check_data(cfg)]


def build_parser():
    """The command line of ``python -m utils.tools.doctor``: train.py's (it checks a training config)."""
    from utils.config import all_options, build_arg_parser

    return build_arg_parser(all_options(), __doc__.split("\n\n")[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.config import ConfigError, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = parse_config(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    requested = cfg.device
    cuda = wants_cuda(requested)
    print(f"preflight for {cfg.config or 'the default config'}: {cfg.model}, dataset {cfg.dataset}, device "
          f"{requested} -> {'cuda' if cuda else 'cpu'}")
    checks = run_checks(cfg)
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"\n{'NOT READY: ' + ', '.join(failed) + ' failed' if failed else 'ready'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
