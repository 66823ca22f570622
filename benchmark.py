#!/usr/bin/env python
"""Throughput, peak memory and FLOPs of any registered model (timm-style ``benchmark.py``).

    python benchmark.py --model maxformer_cifar --mode train --batch-size 16 --T 4 --img-size 32
    python benchmark.py --model maxformer_cifar --mode infer --batch-size 64 --amp bf16
    python benchmark.py --model maxformer_10_384 --mode train --no-fastpath    # the plain path
    python benchmark.py --model maxformer_cifar --sweep --sweep-batch-sizes 4,16   # T in {1,2,4,8}
    python benchmark.py --peak                                                  # matmul peak only
    python benchmark.py --plan-memory --max-batch --device-memory 80GB --model maxformer_10_768 --T 4 --amp bf16

Each measurement: build the model, warm up (``--warmup`` steps, compilation included), then time
``--steps`` steps one by one and report the median. One JSON line per measurement is printed
(the last line starting with ``{`` is the result) and appended to ``--csv``.

Defaults are ``utils.training.fastpath.default_config(mode, amp)`` (flags resolved by
``utils.training.fastpath.resolve_config``, as train.py's): in float32 the fastest settings that stay
within the golden tolerances; under ``--amp`` the fastest settings outright. ``--no-fastpath`` (old
spelling ``--eager``) gives the plain path (spikingjelly neurons, no compile, NCHW).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on CPU the
resident-set high-water mark (``VmHWM``) over the timed steps, reset after warm-up through
``/proc/self/clear_refs`` (so compile-time memory is excluded); sweeps run every measurement in
a fresh subprocess. ``gflop_per_img`` is one forward pass counted by ``torch.utils.flop_counter``
(matmuls/convolutions; neurons, BN and pooling are not counted); a training step is counted as
3x the forward. ``--peak`` adds the machine's measured fp32/bf16 matmul peak and the fraction
of it achieved. ``--plan-memory`` runs nothing: it plans the step's peak device memory with fake
tensors (``utils.training.memory_plan``), and with ``--max-batch`` the largest batch that fits.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from models import ModelError, build_model, check_model_kwargs, input_spec, parse_model_kwargs, reset_net
from utils.config import without_options
from utils.config.cli import Parser, any_int, int_list, machine_count, non_negative_int, positive_int, writable_file
from utils.errors import ConfigError
from utils.io.atomic import atomic_write
from utils.io.outputs import check_outputs
from utils.training import memory_plan as mp
from utils.training.engine import amp_context
from utils.training.fastpath import EAGER, prepare_input, prepare_model, resolve_config
from utils.training.threads import ThreadPolicy

ROOT = os.path.dirname(os.path.abspath(__file__))

CSV_FIELDS = ["model", "mode", "batch_size", "T", "img_size", "img_per_s", "ms_per_step", "peak_mem_mb",
              "gflop_per_img", "gflop_per_s", "peak_fraction", "ms_per_step_min", "amp", "compile",
              "channels_last", "neuron_impl", "fold_bn", "grad_checkpointing", "fast_conv", "compact_spikes",
              "fast_pool", "device", "threads",
              "steps", "mem_method", "tensor_peak_mb", "eager_tensor_peak_mb", "tensor_peak_vs_eager",
              "eager_ms_per_step", "speedup_vs_eager", "speedup_vs_eager_min",
              "model_kwargs", "torch", "host", "time"]


COMPILE_SCOPES = ("model", "blocks", "neurons", "none")


def _legacy_argv(argv: List[str]) -> List[str]:
    """The old ``--compile SCOPE`` spelling -> ``--compile-scope SCOPE`` (``--compile`` is now the switch)."""
    out = list(argv)
    for i, token in enumerate(out):
        flag, eq, value = token.partition("=")
        if flag == "--compile" and eq and value in COMPILE_SCOPES:
            out[i] = f"--compile-scope={value}"
        elif token == "--compile" and i + 1 < len(out) and out[i + 1] in COMPILE_SCOPES:
            out[i] = "--compile-scope"
    return out


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], legacy=_legacy_argv)
    p.add_argument("--model", default="maxformer_cifar", help="registered model name (timm)")
    p.add_argument("--mode", default="train", choices=("train", "infer"))
    p.add_argument("-b", "--batch-size", type=positive_int, default=16)
    p.add_argument("-T", "--T", type=positive_int, default=None, help="time steps (default: the model's)")
    p.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's)")
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra model kwargs, YAML values, e.g. embed_dims=64 neuron=if depths=[1,1,2]")
    p.add_argument("--amp", "--amp-dtype", default="none", type=_amp_dtype, choices=("none", "bf16", "fp16"))
    p.add_bool("--fastpath", default=True, help="the fast path defaults as train.py's; --no-fastpath = the plain "
               "path: spikingjelly neurons, no compile, NCHW")
    p.add_alias("--eager", of="--fastpath", action="store_const", const=False)
    p.aliases["--eager"] = "--no-fastpath"
    p.add_bool("--compile", "--torchcompile", default=None,
               help="torch.compile the whole model (= --compile-scope model; --no-compile = none)")
    p.add_argument("--compile-scope", default=None, choices=COMPILE_SCOPES,
                   help="torch.compile scope: model (whole), blocks (each block/embedding), neurons (only the "
                        "neuron loops; the training default), none (default: the fast path's)")
    p.add_bool("--channels-last", default=None)
    p.add_bool("--fold-bn", default=None, help="fold BN into convs (infer only)")
    p.add_argument("--neuron-impl", default=None, choices=("spikingjelly", "torch", "triton"))
    p.add_bool("--grad-checkpointing", default=None, help="recompute blocks in backward")
    p.add_bool("--fast-conv", default=None, help="matmul backward of large 1x1 convs (train)")
    p.add_bool("--compact-spikes", default=None, help="save binary conv inputs as bool for backward (train, memory)")
    p.add_bool("--fast-pool", default=None, help="max-pool in channels-last")
    p.add_argument("--device", default=None, help="cpu (default) or cuda; with --plan-memory the device planned "
                   "for (default cuda)")
    p.add_argument("--threads", type=machine_count(), default=None,
                   help="torch threads (default: as train.py, the cores other processes leave free)")
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--csv", default=os.path.join(ROOT, "bench", "results.csv"), help="CSV file the rows are "
                   "appended to; '' disables", type=lambda text: writable_file(text) if text else text)
    p.add_bool("--peak", help="measure the matmul peak (fp32, bf16) and report fractions")
    p.add_bool("--sweep", help="sweep T in --sweep-T and batch sizes in --sweep-batch-sizes")
    p.add_argument("--sweep-T", default=[1, 2, 4, 8], type=int_list())
    p.add_argument("--sweep-batch-sizes", default=[1, 4, 16], type=int_list())
    p.add_bool("--smoke", help="tiny width, 1 warm-up + 1 step (tests)")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_bool("--subprocess", default=True,
               help="sweep points in fresh subprocesses (--no-subprocess: in this process; peak memory is then "
                    "cumulative)")
    p.add_bool("--compare-eager",
               help="also time the plain eager float32 path, interleaved step by step in this process (robust "
                    "ratio on a busy machine); adds eager_ms_per_step and speedup_vs_eager (peak memory "
                    "then includes both models)")
    p.add_bool("--plan-memory",
               help="plan the peak device memory of the step instead of running it (utils.training.memory_plan: fake "
                    "tensors, seconds on CPU): weights, gradients, optimizer state, activations, total")
    p.add_bool("--max-batch",
               help="with --plan-memory: the largest batch that fits --device-memory, or else the options "
                    "that make --batch-size fit (accumulation, grad checkpointing, compact spikes)")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="device memory for --max-batch, e.g. 80GB, 24GiB, 40960MB (default: the CUDA device's)")
    return p


def _amp_dtype(text: str) -> str:
    """``--amp`` value; timm's/PyTorch's dtype names (bfloat16, float16, float32) name the same modes."""
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "none"}.get(text.strip().lower(), text)


# ----------------------------------------------------------------------------- measurements
def matmul_peak(device: str = "cpu", n: int = 1024, seconds: float = 1.0) -> Dict[str, float]:
    """Best GFLOP/s of an n x n matmul in fp32 and bf16 (fp16 too on CUDA)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if torch.device(device).type == "cuda":
        dtypes["fp16"] = torch.float16
        n = max(n, 4096)
    out = {}
    for name, dt in dtypes.items():
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        best, t_end = float("inf"), time.perf_counter() + seconds
        for i in range(1000):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t)
            if i >= 3 and time.perf_counter() > t_end:
                break
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one eval-mode forward of ``x`` (``torch.utils.flop_counter``)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    reset_net(model)
    model.train(was_training)
    return float(counter.get_total_flops())


def fastpath_config(args):
    """The fast-path settings of the command line (``utils.training.fastpath.resolve_config``)."""
    switches = {f: getattr(args, f) for f in ("channels_last", "fold_bn", "neuron_impl",
                                              "grad_checkpointing", "fast_conv", "compact_spikes", "fast_pool")}
    switches["compile"] = compile_scope(args)
    cfg, warning = resolve_config(args.mode, args.amp, eager=not args.fastpath, device=args.device or "cpu",
                                  **switches)
    if warning:
        print(warning, file=sys.stderr)
    return cfg


def compile_scope(args) -> Optional[str]:
    """``--compile-scope``, else ``--compile`` (model) / ``--no-compile`` (none), else None (the fast path's)."""
    if args.compile_scope is not None:
        return args.compile_scope
    return None if args.compile is None else ("model" if args.compile else "none")


def measure(args) -> Dict[str, Any]:
    """One measurement in this process; returns the result row."""
    ThreadPolicy.start(args.threads)  # as train.py: the cores other processes leave free, unless --threads
    device = torch.device(args.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark.py: --device cuda but no CUDA device is visible; use --device cpu")
    torch.manual_seed(args.seed)
    try:
        kwargs = parse_model_kwargs(args.model_kwargs)
    except ModelError as err:
        raise SystemExit(f"benchmark.py: --model-kwargs: {err}") from None
    if args.smoke:
        kwargs.setdefault("embed_dims", 32)
        kwargs.setdefault("num_heads", 2)
    if args.T is not None:
        kwargs["T"] = args.T
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    try:
        model = build_model(args.model, **kwargs)
        spec = input_spec(model)
    except ModelError as err:
        raise SystemExit(f"benchmark.py: cannot build {args.model!r}: {err}") from None
    img = args.img_size or spec.img_size
    B = args.batch_size
    T = getattr(model, "T", None)
    shape = spec.shape(B, img, T)
    # event models take [B,T,C,H,W] frame counts
    x = torch.randint(0, 4, shape).float() if spec.frames is not None else torch.randn(shape)
    num_classes = getattr(model, "num_classes", 1000)
    y = torch.randint(0, max(num_classes, 1), (B,))

    flops = forward_flops(model, x[:1])
    model.to(device)
    cfg = fastpath_config(args)
    if args.mode == "train":
        model.train()
    x = x.to(device)
    y = y.to(device)
    baseline = None
    if args.compare_eager:  # the plain path, timed interleaved with this one (same load, same data)
        plain = argparse.Namespace(**{**vars(args), "amp": "none"})  # the plain path is float32
        baseline = _make_step(prepare_model(copy.deepcopy(model), args.mode, config=EAGER), x, y, plain, device)
    cfg = prepare_model(model, args.mode, config=cfg, example_input=x).fastpath_config  # what applied
    step = _make_step(model, prepare_input(x, cfg.channels_last), y, args, device)

    for _ in range(max(args.warmup, 0)):
        step()
        if baseline is not None:
            baseline()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        mem_method = "cuda_max_allocated"
    else:
        mem_method = "rss_hwm_timed" if _reset_peak_rss() else "rss_hwm_process"
    times, base_times = [], []
    for _ in range(max(args.steps, 1)):
        times.append(_timed(step, device))
        if baseline is not None:
            base_times.append(_timed(baseline, device))
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else _peak_rss_mb())
    if baseline is not None:
        mem_method += "+eager_model"
    tensor_peak = base_tensor_peak = None
    if device.type == "cpu":  # after the timed steps: the profiler slows the step it watches
        tensor_peak = tensor_peak_mb(step, step.live_tensors)
        if baseline is not None:
            base_tensor_peak = tensor_peak_mb(baseline, baseline.live_tensors)
    ms = statistics.median(times) * 1e3
    img_per_s = B / (ms / 1e3)
    gflop_img = flops / 1e9
    gflop_s = gflop_img * img_per_s * (3 if args.mode == "train" else 1)
    return {
        "model": args.model, "mode": args.mode, "batch_size": B, "T": T, "img_size": img,
        "img_per_s": _sig(img_per_s), "ms_per_step": _sig(ms), "peak_mem_mb": round(peak, 1),
        "gflop_per_img": _sig(gflop_img), "gflop_per_s": _sig(gflop_s),
        "ms_per_step_min": _sig(min(times) * 1e3), "amp": args.amp,
        "compile": cfg.compile or "none", "channels_last": cfg.channels_last, "neuron_impl": cfg.neuron_impl,
        "fold_bn": cfg.fold_bn, "grad_checkpointing": cfg.grad_checkpointing, "fast_conv": cfg.fast_conv,
        "compact_spikes": cfg.compact_spikes, "fast_pool": cfg.fast_pool,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu:{platform.processor() or platform.machine()}"),
        "threads": torch.get_num_threads(), "steps": len(times), "mem_method": mem_method,
        "model_kwargs": json.dumps(kwargs, default=str) if kwargs else "",
        "torch": torch.__version__, "host": platform.node(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tensor_peak_mb": round(tensor_peak, 1) if tensor_peak is not None else "",
        **({"eager_tensor_peak_mb": round(base_tensor_peak, 1),
            "tensor_peak_vs_eager": _sig(tensor_peak / base_tensor_peak, 3)} if base_tensor_peak else {}),
        **({"eager_ms_per_step": _sig(statistics.median(base_times) * 1e3),
            "speedup_vs_eager": _sig(statistics.median(base_times) / statistics.median(times), 3),
            "speedup_vs_eager_min": _sig(min(base_times) / min(times), 3)} if base_times else {}),
    }


def tensor_peak_mb(step, live_tensors) -> float:
    """Peak MB held by tensors during one call of ``step`` on CPU, independent of the allocator.

    The tensors alive before the call (``live_tensors()``: parameters, gradients, optimizer
    state, inputs) plus the highest running sum of the allocations and frees that the profiler
    records during the call -- what ``torch.cuda.max_memory_allocated`` reports on CUDA. (The
    resident-set peak also counts what glibc keeps after frees.)
    """
    storages = {}
    for t in live_tensors():
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return (sum(storages.values()) + peak) / 2 ** 20


def plan(args) -> Dict[str, Any]:
    """``--plan-memory``: print the planned memory of the step (and with ``--max-batch`` what fits);
    returns the plan's row (``memory_plan.MemoryPlan.as_dict``, plus ``max_batch`` or ``fit_options``)."""
    args.device = args.device or "cuda"
    try:
        kwargs = parse_model_kwargs(args.model_kwargs)
        if args.smoke:
            kwargs.setdefault("embed_dims", 32)
            kwargs.setdefault("num_heads", 2)
        settings = dict(model_name=args.model, T=args.T, batch=args.batch_size, img_size=args.img_size,
                        amp=args.amp, mode=args.mode, model_kwargs=kwargs, num_classes=args.num_classes,
                        device=args.device, **mp.fastpath_settings(fastpath_config(args)))
        planned = mp.plan_step(**settings)
        print(planned.describe())
        row = planned.as_dict()
        if args.max_batch:
            row.update(_plan_max_batch(args, settings, planned))
    except (ModelError, mp.MemoryPlanError) as err:
        raise SystemExit(f"benchmark.py --plan-memory: {err}") from None
    print(json.dumps(row), flush=True)
    return row


def _plan_max_batch(args, settings: Dict[str, Any], planned) -> Dict[str, Any]:
    """``--max-batch``: the largest batch that fits the device, else the options that make the batch fit."""
    if args.device_memory:
        device_bytes = mp.parse_bytes(args.device_memory)
    elif torch.cuda.is_available():
        device_bytes = torch.cuda.get_device_properties(0).total_memory
    else:
        raise mp.MemoryPlanError("--max-batch needs --device-memory SIZE (e.g. 80GB) on a machine without CUDA")
    budget = (f"{mp.format_bytes(device_bytes)} device memory, {mp.format_bytes(mp.CUDA_OVERHEAD)} of it kept for "
              f"the CUDA context and fragmentation")
    best, best_plan = mp.max_batch(settings, device_bytes)
    row = {"device_memory_mb": round(device_bytes / mp.MiB), "max_batch": best,
           "max_batch_total_mb": round(best_plan.peak / mp.MiB, 1) if best_plan else ""}
    if best:
        print(f"largest batch that fits {budget}: {best} (planned {mp.format_bytes(best_plan.peak)})")
    else:
        print(f"not even batch 1 fits {budget} with these settings")
    if best < args.batch_size:
        options = mp.fit_options({**settings, "batch": args.batch_size}, device_bytes)
        print(f"batch {args.batch_size} (planned {mp.format_bytes(planned.peak)}) does not fit; "
              f"{'what makes it fit:' if options else 'no option tried makes it fit'}")
        for label, p in options:
            print(f"  {label}: planned {mp.format_bytes(p.peak)} at batch {p.batch}")
        if not options:
            print("  (tried grad checkpointing, compact spikes and gradient accumulation); a smaller T, image size "
                  "or model, or a larger device is needed")
        row["fit_options"] = {label: round(p.peak / mp.MiB, 1) for label, p in options}
    return row


def _make_step(model, x, y, args, device):
    """One training step (AdamW) or one inference batch, followed by the neuron reset."""
    autocast = amp_context(args.amp, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.mode == "train" else None

    def step():
        if opt is not None:
            with autocast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast():
                model(x)
        reset_net(model)

    def live_tensors():
        yield from (x, y)
        yield from model.parameters()
        yield from (p.grad for p in model.parameters() if p.grad is not None)
        yield from model.buffers()
        if opt is not None:
            yield from (v for state in opt.state.values() for v in state.values() if torch.is_tensor(v))

    step.live_tensors = live_tensors

    return step


def _timed(fn, device) -> float:
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (readable JSON/CSV)."""
    return float(f"{x:.{digits}g}")


def append_csv(path: str, row: Dict[str, Any]):
    """Append ``row``; a file written with an older column set is rewritten (atomically) with the current one."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    old_rows = None
    if not new:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_rows = list(reader) if reader.fieldnames != CSV_FIELDS else None
    if old_rows is not None:
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(old_rows)
        atomic_write(path, text.getvalue())
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _child_argv(argv: List[str], T: int, b: int) -> List[str]:
    """``argv`` without the sweep options, for one (T, batch) point."""
    out = without_options(argv, valued=("--sweep-T", "--sweep-batch-sizes", "--T", "-T", "-b", "--batch-size", "--csv"),
                          flags=("--sweep", "--peak"))
    return out + ["--T", str(T), "--batch-size", str(b), "--csv", ""]


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """What argparse's types cannot see: the device string and the model kwargs (before any measurement)."""
    try:
        device = torch.device(args.device or "cpu")
    except RuntimeError:
        parser.error(f"argument --device: expected cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: expected cpu, cuda or cuda:N, got {args.device!r}")
    try:
        check_model_kwargs(args.model, parse_model_kwargs(args.model_kwargs))
    except ModelError as err:
        parser.error(f"argument --model/--model-kwargs: {err}")
    _check_used(parser, args)
    if args.csv:  # rows are appended to a benchmark CSV only: any other file is never rewritten
        try:
            check_outputs({"--csv": args.csv}, flag="--csv with another path", ours=_benchmark_csv)
        except ConfigError as err:
            parser.error(str(err).replace(", or pass --csv with another path to replace it", " (it appends to a "
                                          "CSV of benchmark rows only)"))


# Options read only with another one (``dest: (needed dest, its flag)``), and those only a measurement reads.
_ONLY_WITH = {"sweep_T": ("sweep", "--sweep"), "sweep_batch_sizes": ("sweep", "--sweep"),
              "device_memory": ("max_batch", "--max-batch")}
_MEASURING = ("warmup", "steps", "sweep", "compare_eager", "peak", "seed", "csv")


def _check_used(parser: argparse.ArgumentParser, args) -> None:
    """Refuse an option this run would not read (every accepted option changes the result)."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    given = [d for d in flags if d != "help" and getattr(args, d, None) != parser.get_default(d)]
    for dest in given:
        need, flag = _ONLY_WITH.get(dest, (None, None))
        if need and not getattr(args, need):
            parser.error(f"{flags[dest]} applies only with {flag}")
    unused = [flags[d] for d in _MEASURING if d in given]
    if (args.plan_memory or args.max_batch) and unused:
        parser.error(f"{', '.join(unused)} set a measurement; --plan-memory / --max-batch plan without running a "
                     f"step or writing the CSV: leave {'them' if len(unused) > 1 else 'it'} out")


def _benchmark_csv(path: str) -> bool:
    """True when ``path`` is a CSV of benchmark rows (this version's columns or an older set): rows are appended."""
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:2] == CSV_FIELDS[:2] and "img_per_s" in header


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    argv = parser.normalize(argv)  # the sweep's child commands drop --sweep / --peak in one spelling
    check_args(parser, args)
    if args.smoke:
        args.warmup, args.steps = min(args.warmup, 1), 1
        args.img_size = args.img_size or 32
        args.batch_size = min(args.batch_size, 2)
        args.T = args.T or 1
    peak = matmul_peak(args.device or "cpu") if args.peak else None
    if peak:
        print(json.dumps({"matmul_peak_gflop_per_s": {k: round(v, 1) for k, v in peak.items()}}), flush=True)
    if args.plan_memory or args.max_batch:
        return [plan(args)]
    rows = []
    if args.sweep:
        for T in args.sweep_T:
            for b in args.sweep_batch_sizes:
                child = _child_argv(argv, T, b)
                if not args.subprocess:
                    row = measure(build_parser().parse_args(child))
                else:
                    proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + child,
                                          capture_output=True, text=True)
                    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                    if proc.returncode or not lines:
                        print(json.dumps({"model": args.model, "T": T, "batch_size": b,
                                          "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}), flush=True)
                        continue
                    row = json.loads(lines[-1])
                rows.append(row)
    else:
        rows.append(measure(args))
    for row in rows:
        if peak:
            ref = peak["bf16"] if args.amp == "bf16" else peak.get("fp16" if args.amp == "fp16" else "fp32")
            row["peak_fraction"] = _sig(row["gflop_per_s"] / ref, 3)
        append_csv(args.csv, row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
