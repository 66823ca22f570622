#!/usr/bin/env python3
"""Evaluate a checkpoint — ours (``last.pth.tar`` / ``best.pth.tar``) or the authors' released files.

    python validate.py -c cifar10-100/cifar10.yaml --checkpoint output/cifar10/best.pth.tar
    python validate.py -c imagenet/10_768_t4.yaml --checkpoint imagenet/checkpoints/10-768-T4.pth.tar
    torchrun --nproc_per_node 8 validate.py -c imagenet/10_768_t4.yaml --checkpoint ... --results-file r.json

The config supplies the model, T and dataset (any key can be overridden as in train.py). Prints top-1 /
top-5 and optionally writes them as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from utils.config import ConfigError, Option, parse_config

VALIDATE_OPTIONS = {
    "checkpoint": Option("", str, "checkpoint to evaluate (ours or the authors' .pth.tar)"),
    "use_ema": Option(False, bool, "evaluate the EMA weights stored in the checkpoint"),
    "results_file": Option("", str, "write the results as JSON to this file"),
    "trust_checkpoint": Option(False, bool, "allow arbitrary pickled objects in the checkpoint (trusted files only)"),
    "energy": Option(False, bool, "also measure firing rates, SOPs and energy (paper App. B) on the eval data"),
    "energy_batches": Option(4, int, "eval batches the energy measurement averages over"),
    "energy_out": Option("", str, "folder for the energy JSON/CSV/PNG (default: next to the checkpoint)"),
}


def build_eval(cfg):
    """Model (with weights), eval loader and dist info for ``cfg``; reusable by analysis tools."""
    from torch.utils.data import DataLoader

    from train import build_model
    from utils import data as data_lib
    from utils.checkpoint import load_checkpoint
    from utils.distributed import ShardSampler, init_distributed
    from utils.engine import place_model, seed_everything

    try:
        dist_info = init_distributed(cfg.device, cfg.dist_backend)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    seed_everything(cfg.seed)
    _, eval_set = data_lib.create_datasets(cfg, include_train=False)
    num_classes = cfg.num_classes or data_lib.dataset_info(cfg.dataset)["num_classes"]
    model = build_model(cfg, num_classes)
    if not cfg.checkpoint:
        raise ConfigError("no checkpoint given: pass --checkpoint PATH")
    key = "state_dict_ema" if cfg.use_ema else None
    load_checkpoint(model, cfg.checkpoint, strict=True, key=key, trust_pickle=cfg.trust_checkpoint)
    model = place_model(model, dist_info.device, cfg.channels_last)
    loader = DataLoader(eval_set, batch_size=cfg.val_batch_size or cfg.batch_size,
                        sampler=ShardSampler(len(eval_set), dist_info.rank, dist_info.world_size),
                        num_workers=cfg.workers, pin_memory=bool(cfg.pin_memory) and dist_info.device.type == "cuda")
    return model, loader, dist_info, num_classes


def run(cfg) -> Dict[str, Any]:
    from utils.engine import amp_context, evaluate

    model, loader, dist_info, num_classes = build_eval(cfg)
    try:
        autocast = amp_context(cfg.amp, dist_info.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    t0 = time.perf_counter()
    res = evaluate(model, loader, device=dist_info.device, autocast=autocast, channels_last=cfg.channels_last,
                   max_batches=cfg.max_eval_batches, progress=cfg.progress and dist_info.is_main)
    out = {"model": cfg.model, "checkpoint": os.path.abspath(cfg.checkpoint), "ema": cfg.use_ema,
           "dataset": cfg.dataset, "T": cfg.T, "num_classes": num_classes, "samples": res["count"],
           "top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "amp": cfg.amp,
           "seconds": time.perf_counter() - t0}
    if cfg.energy:
        out["energy"] = measure_eval_energy(cfg, model, loader, dist_info)
    if dist_info.is_main:
        print(f"{cfg.model} T={cfg.T} on {cfg.dataset} ({res['count']} samples): top-1 {res['top1']:.3f} %  "
              f"top-5 {res['top5']:.3f} %  loss {res['loss']:.4f}")
        if cfg.results_file:
            with open(cfg.results_file, "w") as f:
                json.dump(out, f, indent=2)
            print(f"results written to {cfg.results_file}")
    return out


def measure_eval_energy(cfg, model, loader, dist_info) -> Dict[str, Any]:
    """Firing rates, SOPs and energy of the loaded model on ``cfg.energy_batches`` eval batches."""
    from utils.energy import measure_energy, write_report

    report = measure_energy(model, loader, T=cfg.T, max_batches=cfg.energy_batches, model_name=cfg.model,
                            input_desc=f"{cfg.dataset} eval, {cfg.energy_batches} batches, {cfg.checkpoint}")
    if dist_info.is_main:
        print(report.format_table(per_layer=False))
        out_dir = cfg.energy_out or os.path.join(os.path.dirname(os.path.abspath(cfg.checkpoint)), "energy")
        write_report(report, out_dir, f"{cfg.model}_T{cfg.T}", title=f"{cfg.model} T={cfg.T} on {cfg.dataset}")
    return {"mj_per_image": report.energy_mj, "sops_per_image": report.sops, "mac_flops_per_image": report.mac_flops}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.config import input_errors, report_input_error
    from utils.distributed import cleanup

    try:
        cfg = parse_config(argv, extra=VALIDATE_OPTIONS, description=__doc__.split("\n\n")[0])
        run(cfg)
        return 0
    except input_errors() as err:
        return report_input_error(err)
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
