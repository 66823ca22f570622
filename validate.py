#!/usr/bin/env python3
"""Evaluate a checkpoint — ours (``last.pth.tar`` / ``best.pth.tar``) or the authors' released files.

    python validate.py -c cifar10-100/cifar10.yaml --checkpoint output/cifar10/best.pth.tar
    python validate.py -c imagenet/10_768_t4.yaml --checkpoint imagenet/checkpoints/10-768-T4.pth.tar
    python validate.py -c imagenet/10_768_t1.yaml --model maxformer_10_768.t1_in1k --pretrained
    torchrun --nproc_per_node 8 validate.py -c imagenet/10_768_t4.yaml --checkpoint ... --results-file r.json

The config supplies the model, T and dataset (any key can be overridden as in train.py). Prints top-1 /
top-5 and optionally writes them as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Dict, Optional, Sequence

from timm.models import get_pretrained_cfg
from torch.utils.data import DataLoader

from models import input_spec
from models.weights import stored_model_kwargs
from utils import data as data_lib
from utils.analysis.energy import measure_energy, report_paths, settings_tag, write_report
from utils.config import ConfigError, Option, all_options, build_arg_parser, parse_config, report_input_error
from utils.errors import INPUT_ERRORS
from utils.io.atomic import FileWriteError, atomic_write
from utils.io.outputs import check_outputs, record_outputs
from utils.io.paths import describe_os_error, readable_file_problem, writable_folder_problem
from utils.training.checkpoint import load_checkpoint, read_checkpoint
from utils.training.distributed import ShardSampler, cleanup, init_distributed, is_main
from utils.training.engine import build_model, eval_amp_context, evaluate, place_model
from utils.training.preflight import check_machine
from utils.training.seeding import seed_everything
from utils.training.threads import loader_workers

VALIDATE_OPTIONS = {
    "checkpoint": Option("", str, "checkpoint to evaluate (ours or the authors' .pth.tar)"),
    "use_ema": Option(False, bool, "evaluate the EMA weights stored in the checkpoint"),
    "results_file": Option("", str, "write the results as JSON to this file"),
    "trust_checkpoint": Option(False, bool, "allow arbitrary pickled objects in the checkpoint (trusted files only)"),
    "energy": Option(False, bool, "also measure firing rates, SOPs and energy (paper App. B) on the eval data"),
    "energy_batches": Option(4, int, "eval batches the energy measurement averages over", low=1),
    "energy_out": Option("", str, "folder for the energy JSON/CSV/PNG (default: next to the checkpoint)",
                         flags=("--energy-output",)),
}

# The config keys an evaluation uses: the ones ``validate.py -h`` lists. The training keys are accepted too (from
# a YAML config or the command line, so ``-c cifar10-100/cifar10.yaml`` works) but are not listed.
EVAL_KEYS = ("model", "model_kwargs", "num_classes", "T", "pretrained", "device", "threads", "dist_backend", "seed",
             "deterministic", "amp", "eval_amp", "channels_last", "fastpath", "compile", "neuron_impl", "batch_size",
             "val_batch_size", "max_eval_batches", "progress", "dataset", "data_path", "download", "verify_data",
             "img_size", "mean", "std", "crop_pct", "interpolation", "synthetic_size", "workers", "pin_memory",
             "overwrite", *VALIDATE_OPTIONS)


def build_parser():
    """The command line of ``validate.py`` (``-h`` lists :data:`EVAL_KEYS`)."""
    return build_arg_parser(all_options(VALIDATE_OPTIONS), __doc__.split("\n\n")[0], shown=EVAL_KEYS)


def refuse_training_flags(argv: Sequence[str], cfg) -> None:
    """A training key on the command line would change nothing here: refused (from a YAML config it is fine); so
    are the energy settings without ``--energy``."""
    given, _ = build_parser().parse_known_args(list(argv))
    ignored = sorted(k for k in vars(given) if k != "config" and k not in EVAL_KEYS)
    energy_only = [flag for k, flag in (("energy_batches", "--energy-batches"), ("energy_out", "--energy-output"))
                   if k in vars(given)]
    if energy_only and not cfg.energy:
        raise ConfigError(f"{', '.join(energy_only)}: only with --energy, which this run does not set; add --energy "
                          f"or leave {'it' if len(energy_only) == 1 else 'them'} out")
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        raise ConfigError(f"{flags}: training setting{'s' if len(ignored) > 1 else ''} that validate.py does not "
                          f"read (it evaluates; validate.py -h lists its settings); leave "
                          f"{'them' if len(ignored) > 1 else 'it'} out")


def check_input(cfg, model, eval_set) -> None:
    """Stop before the evaluation if the eval samples do not have the shape the model takes (``input_spec``)."""
    spec = input_spec(model)
    sample = eval_set[0][0]
    shape = tuple(getattr(sample, "shape", ()))
    want = spec.shape(1, img_size=shape[-1] if shape else None)[1:]  # any image size; channels (and frames) fixed
    if len(shape) != len(want) or shape[-3] != want[-3] or (spec.frames is not None and shape[0] != cfg.T):
        raise ConfigError(f"{cfg.dataset} samples have shape {list(shape)} but {cfg.model} takes "
                          f"{list(want)} per sample ({spec.channels} channels"
                          + (f", T={cfg.T} frames" if spec.frames is not None else "") + "); "
                          "check --dataset, --model and --T")


def prepare_results_file(path: str, cfg=None) -> str:
    """Create the folder of ``--results-file`` and check it is writable and replaces neither an input (the
    checkpoint, the config) nor a file validate.py did not write (``--overwrite``), before any evaluation."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"--results-file {path} is a folder; give a file name such as {path}/results.json")
    if cfg is not None:
        check_outputs({"--results-file": path}, cfg.overwrite, inputs=(cfg.checkpoint, cfg.config))
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--results-file: cannot create the folder {folder} ({err.strerror})") from None
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"--results-file: {path} is not writable; choose another path")
    return path


def check_paths(cfg) -> None:
    """The checkpoint is a readable file and the energy folder (with ``--energy``) writable, before any work."""
    if not cfg.checkpoint:  # --pretrained (or neither: the caller names both ways)
        if cfg.energy and cfg.energy_out:
            problem = writable_folder_problem(cfg.energy_out, "--energy-output folder")
            if problem:
                raise ConfigError(problem)
        return
    if not os.path.isdir(cfg.checkpoint):  # a folder: utils.training.checkpoint names the files inside it
        problem = readable_file_problem(cfg.checkpoint, "--checkpoint")
        if problem and os.path.exists(cfg.checkpoint):
            raise ConfigError(problem)
    if cfg.energy:
        out = cfg.energy_out or os.path.join(os.path.dirname(os.path.abspath(cfg.checkpoint)), "energy")
        problem = writable_folder_problem(out, "--energy-output folder")
        if problem:
            raise ConfigError(problem)

        check_outputs(report_paths(out, energy_stem(cfg)), cfg.overwrite, inputs=(cfg.checkpoint,))


def energy_stem(cfg) -> str:
    """The file-name stem of the ``--energy`` report: the model, T and its model kwargs."""
    return f"{cfg.model}_T{cfg.T}" + (f"_{settings_tag(cfg.model_kwargs)}" if cfg.model_kwargs else "")


def write_results(path: str, out: Dict[str, Any]) -> None:
    """Write the JSON atomically; if that still fails, print it so the result is not lost."""
    text = json.dumps(out, indent=2)
    try:
        atomic_write(path, text + "\n")
        record_outputs(path)
    except FileWriteError as err:
        print(text)
        raise ConfigError(f"could not write --results-file {path} ({err.reason}); the results are printed above") \
            from None


def _check_pretrained_classes(cfg, num_classes: int) -> None:
    """``--pretrained`` evaluates the released classifier: the number of classes must be the weights'."""
    try:
        weights = get_pretrained_cfg(cfg.model).num_classes
    except RuntimeError:  # unknown tag: build_model says which tags exist
        return
    if weights != num_classes:
        raise ConfigError(f"--pretrained {cfg.model}: its classifier has {weights} classes but {cfg.dataset} is "
                          f"evaluated with {num_classes}; evaluate on the weights' dataset (e.g. --dataset imagenet) "
                          f"or fine-tune first (train.py --pretrained)")


def weights_source(cfg) -> str:
    """What was evaluated: the checkpoint path, or the pretrained weights (``NAME.TAG``)."""
    return os.path.abspath(cfg.checkpoint) if cfg.checkpoint else f"pretrained:{cfg.model}"


def adopt_checkpoint_settings(cfg, log=None):
    """A checkpoint train.py wrote records the model it was built as: evaluate that model. Its ``model_kwargs`` and
    ``num_classes`` replace the config's (each difference is said); ``T`` stays the evaluation's own choice.
    Returns the checkpoint as read, so it is loaded without reading the file again."""
    checkpoint = read_checkpoint(cfg.checkpoint, trust_pickle=cfg.trust_checkpoint, trust_flag="--trust-checkpoint")
    stored = stored_model_kwargs(checkpoint, cfg.model)
    if not stored:
        return checkpoint
    stored.pop("T", None)
    num_classes = stored.pop("num_classes", cfg.num_classes)
    given = dict(cfg.model_kwargs or {})
    kept = {k: v for k, v in given.items() if k == "neuron_impl"}  # how to run, not what was trained
    changes = [f"{k}={v!r} (config: {given[k]!r})" if k in given else f"{k}={v!r}"
               for k, v in stored.items() if given.get(k, object()) != v]
    changes += [f"{k} dropped (config: {v!r}; the run used the default)" for k, v in given.items()
                if k not in stored and k not in kept]
    if cfg.num_classes is not None and num_classes != cfg.num_classes:
        changes.append(f"num_classes={num_classes} (config: {cfg.num_classes})")
    cfg.model_kwargs, cfg.num_classes = {**stored, **kept}, num_classes
    if changes and log:
        log(f"model settings from {cfg.checkpoint}: " + ", ".join(changes))
    return checkpoint


def build_eval(cfg):
    """Model (with weights), eval loader and dist info for ``cfg``; reusable by analysis tools."""
    if not cfg.checkpoint and not cfg.pretrained:
        raise ConfigError("no weights given: pass --checkpoint PATH, or --pretrained for the model's released "
                          "weights (e.g. --model maxformer_10_768.t4_in1k --pretrained)")
    if cfg.checkpoint and cfg.pretrained:
        raise ConfigError("--checkpoint and --pretrained both name the weights to evaluate; pass one of them")
    try:
        dist_info = init_distributed(cfg.device, cfg.dist_backend)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    if cfg.workers is None:
        cfg.workers = loader_workers(dist_info.device.type, dist_info.world_size)
    seed_everything(cfg.seed)
    checkpoint = adopt_checkpoint_settings(cfg, log=print if dist_info.is_main else None) if cfg.checkpoint else None
    _, eval_set = data_lib.create_datasets(cfg, include_train=False)
    num_classes = cfg.num_classes or data_lib.dataset_info(cfg.dataset)["num_classes"]
    if cfg.pretrained:
        _check_pretrained_classes(cfg, num_classes)
    model = build_model(cfg, num_classes)
    check_input(cfg, model, eval_set)
    if cfg.checkpoint:
        key = "state_dict_ema" if cfg.use_ema else None
        read = isinstance(checkpoint, Mapping)  # else (a pickled object) load_checkpoint reads and names it
        load_checkpoint(model, checkpoint if read else cfg.checkpoint, strict=True, key=key,
                        trust_pickle=cfg.trust_checkpoint, trust_flag="--trust-checkpoint",
                        log=print if dist_info.is_main else None, source=cfg.checkpoint)
    model = place_model(model, dist_info.device, cfg.channels_last)
    loader = DataLoader(eval_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                        sampler=ShardSampler(len(eval_set), dist_info.rank, dist_info.world_size),
                        num_workers=cfg.workers, pin_memory=bool(cfg.pin_memory) and dist_info.device.type == "cuda")
    return model, loader, dist_info, num_classes


def run(cfg) -> Dict[str, Any]:
    results_file = prepare_results_file(cfg.results_file, cfg) if cfg.results_file and is_main() else None
    check_paths(cfg)
    model, loader, dist_info, num_classes = build_eval(cfg)
    try:
        autocast = eval_amp_context(cfg, dist_info.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    t0 = time.perf_counter()
    res = evaluate(model, loader, device=dist_info.device, autocast=autocast, channels_last=cfg.channels_last,
                   max_batches=cfg.max_eval_batches, progress=cfg.progress and dist_info.is_main)
    out = {"model": cfg.model, "checkpoint": weights_source(cfg), "ema": cfg.use_ema,
           "dataset": cfg.dataset, "T": cfg.T, "num_classes": num_classes, "samples": res["count"],
           "top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "amp": cfg.amp,
           "seconds": time.perf_counter() - t0}
    if cfg.energy:
        out["energy"] = measure_eval_energy(cfg, model, loader, dist_info)
    if dist_info.is_main:
        print(f"{cfg.model} T={cfg.T} on {cfg.dataset} ({res['count']} samples): top-1 {res['top1']:.3f} %  "
              f"top-5 {res['top5']:.3f} %  loss {res['loss']:.4f}")
        if results_file:
            write_results(results_file, out)
            print(f"results written to {results_file}")
    return out


def measure_eval_energy(cfg, model, loader, dist_info) -> Dict[str, Any]:
    """Firing rates, SOPs and energy of the loaded model on ``cfg.energy_batches`` eval batches."""
    report = measure_energy(model, loader, T=cfg.T, max_batches=cfg.energy_batches, model_name=cfg.model,
                            input_desc=f"{cfg.dataset} eval, {cfg.energy_batches} batches, {weights_source(cfg)}")
    if dist_info.is_main:
        print(report.format_table(per_layer=False))
        folder = os.path.dirname(os.path.abspath(cfg.checkpoint)) if cfg.checkpoint else os.getcwd()
        out_dir = cfg.energy_out or os.path.join(folder, "energy")
        write_report(report, out_dir, energy_stem(cfg), title=f"{cfg.model} T={cfg.T} on {cfg.dataset}",
                     overwrite=cfg.overwrite)
    return {"mj_per_image": report.energy_mj, "sops_per_image": report.sops, "mac_flops_per_image": report.mac_flops}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        cfg = parse_config(argv, extra=VALIDATE_OPTIONS, description=__doc__.split("\n\n")[0], shown=EVAL_KEYS,
                           check=check_machine)
        refuse_training_flags(sys.argv[1:] if argv is None else argv, cfg)
        run(cfg)
        return 0
    except INPUT_ERRORS as err:
        return report_input_error(err)
    except OSError as err:  # the last line of defence: paths are checked before the evaluation
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
