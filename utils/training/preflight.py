"""Can this run start? The checks ``train.py`` applies before it writes anything, and the doctor's checklist.

One owner for every answer: ``train.py`` refuses on the same conditions, by the same functions, that
``python -m utils.tools.doctor`` reports as FAIL, so "ready" means ``train.py`` starts:

* :func:`parse_run_config` — the config of a training run: :data:`RELATIONS` between its keys, and :data:`NEEDS`
  (a flag that acts only with another setting);
* :func:`start_checks` — torch, driver, GPUs, C compiler and mixed precision for the device: ``train.py``
  runs them right after choosing the device (:func:`refuse_failed`);
* :func:`batch_problem` — a batch larger than a process's share of the training set (``train.py``'s dataset
  step); :func:`run_folder_problem` — a folder that holds a run, started over without ``--overwrite``;
  :func:`check_run_paths` — the run folder and the checkpoints it reads;
* :func:`run_checks` — all of them for the doctor, plus the advice ``train.py`` does not stop for: the memory
  plan against free device memory, or host memory on CPU (``train.py`` warns on CUDA only: planning costs
  seconds), and the neuron kernel that will run.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import sysconfig
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from spikingjelly.activation_based import functional as sj_functional

from models import build_model
from models.neurons import neuron_name, spiking_modules
from utils import data as data_lib
from utils.config import Config, ConfigError, flag_name, parse_config
from utils.config.cli import machine_limit
from utils.data import dataset_info
from utils.io.paths import inside_problem, readable_file_problem, writable_folder_problem
from utils.training import cuda_env, memory_plan
from utils.training.cuda_env import arch_supported, build_cuda_version, cuda_problem, driver_fix, sm_name, wants_cuda
from utils.training.run_folder import RunFolder

__all__ = ["Check", "parse_run_config", "check_run_config", "check_machine", "check_run_paths", "MACHINE", "RELATIONS",
           "NEEDS", "start_checks", "refuse_failed", "batch_problem", "run_folder_problem", "run_checks",
           "neuron_kernel", "host_memory"]


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


def refuse_failed(checks: List[Check]) -> None:
    """Raise ``ConfigError`` naming the first FAIL (``train.py``'s refusal), before anything is written."""
    for check in checks:
        if check.status == "FAIL":
            raise ConfigError(f"preflight: {check.name}: {check.detail}; fix: {check.fix}")


# ------------------------------------------------------------------------------------------- the run's keys
def check_run_paths(cfg) -> None:
    """Before a run writes anything: ``<output>/<experiment>`` stays inside the output root and can be written
    (not a file, not read-only, not full), and the checkpoints it reads exist and are readable files."""
    problem = (inside_problem(cfg.output, cfg.experiment)
               or writable_folder_problem(os.path.join(cfg.output, cfg.experiment), "run folder"))
    for key in ("resume", "initial_checkpoint"):
        path = getattr(cfg, key)
        if not problem and path and not (key == "resume" and path == "auto"):
            problem = readable_file_problem(os.path.expanduser(path), f"{flag_name(key)} checkpoint")
    if problem:
        raise ConfigError(problem)


def _effective_lr(cfg) -> float:
    """The peak lr the run will use (``blr`` scaled by the effective batch when set; WORLD_SIZE processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return cfg.lr if cfg.blr is None else cfg.blr * cfg.batch_size * cfg.accum_steps * world / 256


def _lr_floor(cfg, key: str) -> Optional[str]:
    lr = _effective_lr(cfg)
    if getattr(cfg, key) <= lr:
        return None
    what = f"the lr {lr:g} (= blr {cfg.blr:g} x effective batch / 256)" if cfg.blr is not None else f"lr {lr:g}"
    return (f"config key '{key}' ({getattr(cfg, key):g}) is above {what}: the schedule would raise the lr where it "
            f"should lower it. Set {flag_name(key)} to at most {lr:g} (or raise the lr).")


def _ordered_pair(cfg, key: str) -> Optional[str]:
    v = getattr(cfg, key)
    if v is None or v[0] <= v[1]:
        return None
    return (f"config key '{key}' is a [min, max] range but its minimum is above its maximum: {list(v)}; "
            f"give {flag_name(key)} {v[1]:g} {v[0]:g}")


def _machine_size(cfg, key: str, per_cpu: int, floor: int, what: str) -> Optional[str]:
    (cpus, limit), value = machine_limit(per_cpu, floor), getattr(cfg, key)
    if value is None or value <= limit:
        return None
    return (f"config key '{key}' is {value} but this machine has {cpus} CPUs: {what}. "
            f"Set {flag_name(key)} to at most {limit}" + (" (0 = automatic)." if key == "threads" else "."))


# Rules: each returns None when it holds, else the message (the values and the fix). MACHINE: the sizes this machine
# can run (any command that loads data); RELATIONS: every rule of a training run.
MACHINE: List[Callable[[Config], Optional[str]]] = [
    lambda c: _machine_size(c, "threads", 1, 1, "more threads than CPUs only wait for each other"),
    lambda c: _machine_size(c, "workers", 8, 32, "more loader processes than that only compete for the CPUs"),
]
RELATIONS: List[Callable[[Config], Optional[str]]] = [
    lambda c: None if c.warmup_epochs <= c.epochs else (
        f"warmup_epochs ({c.warmup_epochs}) is larger than epochs ({c.epochs}): epochs counts the whole schedule, "
        f"warm-up included. Lower --warmup-epochs (e.g. --warmup-epochs 0) or raise --epochs to at least "
        f"{c.warmup_epochs}." + (f" Note: the {c.cooldown_epochs} cooldown_epochs come on top of epochs."
                                 if c.cooldown_epochs else "")),
    lambda c: _lr_floor(c, "min_lr"),
    lambda c: _lr_floor(c, "warmup_lr") if c.warmup_epochs else None,
    lambda c: None if c.opt_betas is None or max(c.opt_betas) < 1 else (
        f"config key 'opt_betas' must be below 1 (a beta of 1 never forgets and divides by zero), got "
        f"{list(c.opt_betas)}; e.g. --opt-betas 0.9 0.999"),
    lambda c: None if c.opt_eps is None or c.opt_eps > 0 else (
        f"config key 'opt_eps' must be > 0 (it keeps a division finite), got {c.opt_eps}; e.g. --opt-eps 1e-8"),
    lambda c: None if c.clip_grad is None or c.clip_grad > 0 else (
        f"config key 'clip_grad' must be > 0 (or null = no clipping), got {c.clip_grad}; e.g. --clip-grad 1.0"),
    lambda c: None if c.eval_metric != "ema_top1" or c.model_ema else (
        "config key 'eval_metric' is ema_top1 but model_ema is false: there is no EMA to select by. "
        "Pass --model-ema true, or --eval-metric top1"),
    *(lambda c, k=k: _ordered_pair(c, k) for k in ("scale", "ratio", "cutmix_minmax")),
    *MACHINE,
]


# Keys that act only while another setting is on: ``key: (is it on, the setting)``. On the command line without it they
# would change nothing and are refused (a YAML config may keep them for when it is switched on).
_mixing = (lambda c: bool(c.mixup or c.cutmix or c.cutmix_minmax), "--mixup or --cutmix > 0")
NEEDS: Dict[str, Tuple[Callable[[Config], bool], str]] = {
    **dict.fromkeys(("model_ema_decay", "model_ema_warmup"), (lambda c: c.model_ema, "--model-ema")),
    **dict.fromkeys(("wandb_project", "wandb_entity"), (lambda c: c.log_wandb, "--log-wandb")),
    "clip_mode": (lambda c: c.clip_grad is not None, "--clip-grad"),
    **dict.fromkeys(("warmup_lr", "warmup_prefix"), (lambda c: c.warmup_epochs > 0, "--warmup-epochs > 0")),
    **dict.fromkeys(("remode", "recount"), (lambda c: c.reprob > 0, "--reprob > 0")),
    **dict.fromkeys(("mixup_prob", "mixup_switch_prob", "mixup_mode", "mixup_off_epoch"), _mixing),
}


def _apply(rules: Sequence[Callable[[Config], Optional[str]]], cfg) -> None:
    for rule in rules:
        problem = rule(cfg)
        if problem:
            raise ConfigError(problem)


def check_machine(cfg, given: Iterable[str] = ()) -> None:
    """The first broken :data:`MACHINE` rule raises (``parse_config``'s ``check`` of a command that loads data)."""
    _apply(MACHINE, cfg)


def check_run_config(cfg, given: Iterable[str] = ()) -> None:
    """The rules a training run needs of its keys: the first broken :data:`RELATIONS` rule raises, and so does a
    key ``given`` on the command line that this run would not read (:data:`NEEDS`)."""
    _apply(RELATIONS, cfg)
    for key in given:
        on, setting = NEEDS.get(key, (None, ""))
        if on is not None and key in cfg and not on(cfg):
            raise ConfigError(f"{flag_name(key)} acts only with {setting}, which this run does not set: "
                              f"it would change nothing; leave it out or set {setting.split(' ')[0]}")


def parse_run_config(argv: Optional[Sequence[str]] = None, **kwargs) -> Config:
    """``utils.config.parse_config`` for a training run (``train.py``, the doctor, the sweep): with
    :func:`check_run_config`."""
    return parse_config(argv, check=check_run_config, **kwargs)


# ------------------------------------------------------------------------------------------- environment
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


def _check_amp(cfg, cuda: bool) -> Check:
    for key in ("amp", "eval_amp"):
        if getattr(cfg, key) == "fp16" and not cuda:
            flag = "--" + key.replace("_", "-")
            return Check("FAIL", "amp", f"{key} fp16 needs a CUDA device; this run uses the CPU",
                         f"{flag} bf16 (or {flag} none) on the CPU")
    evaluation = "" if cfg.eval_amp == "same" else f", evaluation {cfg.eval_amp}"
    return Check("PASS", "amp", f"{cfg.amp}{evaluation} on {'cuda' if cuda else 'cpu'}")


def start_checks(cfg, device: torch.device) -> List[Check]:
    """The checks ``train.py`` runs before it writes anything: torch, driver, GPUs, compiler and mixed
    precision for ``device``."""
    cuda = torch.device(device).type == "cuda"
    index = torch.device(device).index or 0
    return [_check_torch(cuda), _check_driver(cuda), *_check_gpus(cuda, index), _check_compiler(cfg, cuda),
            _check_amp(cfg, cuda)]


# ------------------------------------------------------------------------------------------- the run itself
def batch_problem(cfg, n_train: int, world_size: int) -> Optional[str]:
    """A batch larger than a process's share of the training set (an epoch of no step), or None."""
    per_rank = n_train // world_size
    if per_rank >= cfg.batch_size:
        return None
    return (f"config key 'batch_size': {cfg.batch_size} is larger than the {per_rank} training samples per process "
            f"({n_train} in {cfg.dataset} / {world_size} process(es)), so an epoch would have no step; lower "
            f"--batch-size to at most {per_rank}")


def run_folder_problem(cfg) -> Optional[str]:
    """A fresh start over a folder that holds a run without ``--overwrite``, or None (resumes are checked by
    reading the checkpoint)."""
    if cfg.resume or cfg.overwrite:
        return None
    return RunFolder(os.path.join(cfg.output, cfg.experiment)).fresh_start_problem()


def _check_paths(cfg) -> Check:
    try:
        check_run_paths(cfg)
    except ConfigError as err:
        return Check("FAIL", "paths", str(err))
    problem = run_folder_problem(cfg)
    if problem:
        return Check("FAIL", "paths", problem)
    return Check("PASS", "paths", f"run folder {os.path.abspath(os.path.join(cfg.output, cfg.experiment))}")


def _check_data(cfg) -> Check:
    quiet = Config(**{**vars(cfg), "download": False, "verify_data": False})
    try:
        train_set, eval_set = data_lib.create_datasets(quiet)
    except (data_lib.DatasetError, ConfigError) as err:
        first, _, rest = str(err).partition("\n")
        if cfg.download:
            return Check("WARN", "data", first, "download: true: train.py downloads it at start")
        return Check("FAIL", "data", first, rest.strip().replace("\n", "\n" + " " * 16) or "see docs/data.md")
    problem = batch_problem(cfg, len(train_set), int(os.environ.get("WORLD_SIZE", "1") or 1))
    if problem:
        text, _, fix = problem.rpartition("; ")
        return Check("FAIL", "data", text, fix)
    spec = data_lib.DATASETS[data_lib.canonical_name(cfg.dataset)]
    where = f"in {data_lib.data_root(cfg)}" if spec.tree else f"({spec.note})"
    return Check("PASS", "data", f"{spec.name} {where}: {len(train_set)} train / {len(eval_set)} eval samples")


# ------------------------------------------------------------------------------------------- advice
def host_memory() -> "tuple[int, int]":
    """(available, total) bytes of host memory (``MemAvailable`` of /proc/meminfo where there is one)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, total
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), total


def _check_memory(cfg, cuda: bool, index: int) -> Check:
    """The plan against free GPU memory, or available host memory on CPU, by the rule of train.py's warning
    (:func:`memory_plan.fits`, its 1 GB allowance for what is not tensors included)."""
    try:
        planned = int(memory_plan.plan_memory(cfg))
    except Exception as err:  # the plan is advice: report it, never stop the checklist
        return Check("WARN", "memory", f"memory plan failed: {type(err).__name__}: {err}")
    text = f"plan {planned / 2**30:.1f} GiB per process"
    if cuda and cuda_problem(index) is not None:
        return Check("PASS", "memory", text + " (not checked: no usable GPU)")
    if cuda:
        free, total = torch.cuda.mem_get_info(index)
        text += f", free {free / 2**30:.1f} of {total / 2**30:.1f} GiB on cuda:{index}"
    else:
        free, total = host_memory()
        text += f", available {free / 2**30:.1f} of {total / 2**30:.1f} GiB of host memory"
    if not memory_plan.fits(planned, free):
        return Check("FAIL", "memory", text, "lower --batch-size (with --accum-steps to keep the effective batch), "
                     "or --grad-checkpointing true, or --compact-spikes true; see python benchmark.py --plan-memory")
    return Check("PASS", "memory", text)


def neuron_kernel(kind: str, device: "torch.device | str", fastpath: bool = False) -> str:
    """The kernel that runs ``kind`` ('lif' / 'if') neurons on ``device``: 'torch' (spikingjelly's CPU
    reference, or the project's PyTorch loop under the fast path), 'triton' or 'cuda' (spikingjelly's own
    selection on a GPU; its compiled CUDA part is absent from the PyPI wheel, so it picks Triton)."""
    device = torch.device(device)
    if fastpath or device.type != "cuda":
        return "torch"
    if cuda_problem(device.index) is None:
        return str(sj_functional.neuron_implementation(kind, device)["implementation"])

    for name, module in (("cuda", f"spikingjelly._ops.{'if_' if kind == 'if' else kind}.native"),
                         ("triton", "triton")):
        try:
            importlib.import_module(module)
            return name
        except (ImportError, OSError):
            continue
    return "torch"


def _check_neurons(cfg, device: torch.device) -> Check:
    try:
        model = build_model(cfg.model, T=cfg.T, meta=True, model_kwargs=cfg.model_kwargs,
                            num_classes=cfg.num_classes or dataset_info(cfg.dataset)["num_classes"],
                            neuron_impl=cfg.neuron_impl)
    except Exception as err:
        return Check("WARN", "neurons", f"not inspected: model {cfg.model} does not build on the meta device "
                     f"({type(err).__name__}: {err})")
    kinds = sorted({neuron_name(m) for _, m in spiking_modules(model)})
    if not kinds:
        return Check("PASS", "neurons", f"{cfg.model} has no spiking neurons")
    fast = cfg.fastpath
    how = "fastpath: the project's PyTorch loop, compiled" if fast else "spikingjelly's selection"
    names = ", ".join(f"{k}: {neuron_kernel(k, device, fast) if k in ('lif', 'if') else 'its own forward'}"
                      for k in kinds)
    return Check("PASS", "neurons", f"{names} on {device.type} ({how})")


def _device_index(cfg) -> int:
    name = cfg.device.lower()
    if ":" in name:
        return int(name.split(":", 1)[1])
    return int(os.environ.get("LOCAL_RANK", "0"))


def run_checks(cfg) -> List[Check]:
    """Every check for ``cfg`` on this machine: train.py's refusals, then the memory plan and the neurons."""
    cuda, index = wants_cuda(cfg.device), _device_index(cfg)
    device = torch.device("cuda", index) if cuda else torch.device("cpu")
    return [_check_paths(cfg), *start_checks(cfg, device), _check_data(cfg), _check_memory(cfg, cuda, index),
            _check_neurons(cfg, device)]
