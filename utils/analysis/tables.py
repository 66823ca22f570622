"""Paper-table kit: our models beside the paper's Tables 2, 3 and 5, and log comparison.

``python -m utils.analysis.tables`` prints every registered model's parameter count next to the paper's
(✓ = equal at the paper's two decimals, rounded or truncated; ≈ = within 1 %; ✗ = otherwise), and
an energy estimate for models given ``--weights NAME=PATH`` (see :mod:`utils.analysis.energy`).

``python -m utils.analysis.tables compare-log --run output/.../summary.csv --reference cifar100`` overlays a
run's per-epoch ``summary.csv`` (columns ``epoch, eval_top1, eval_loss, train_loss``) on the
authors' curves (shipped in ``docs/reference_logs/``) and writes a PNG.

``python -m utils.analysis.tables runs --runs DIR [--table 2|3|4|5|7]`` collects the run folders under DIR (a sweep of
:mod:`utils.tools.sweep`) and writes one row per config: the paper's number, our best top-1 as mean ± std over
seeds, epochs done/planned and the difference, as Markdown, CSV and a figure.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import yaml

import models
from models import ModelError, build_model, input_spec
from utils.analysis.energy import measure_energy, synthetic_batches
from utils.config import load_yaml
from utils.config.cli import Parser, existing_folder, positive_int, readable_file, writable_file, writable_folder
from utils.errors import ConfigError
from utils.io.figures import pyplot
from utils.io.outputs import check_outputs, record_outputs
from utils.training.checkpoint import load_model, read_checkpoint
from utils.training.run_folder import run_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_LOG_DIR = os.path.join(ROOT, "docs", "reference_logs")
REFERENCE_LOGS = {
    "cifar10": "cifar10-100_logs_cifar-10.csv",
    "cifar100": "cifar10-100_logs_cifar-100.csv",
    "cifar10dvs": "event_logs_cifar10-dvs.csv",
    "dvsgesture": "event_logs_dvs_gesture.csv",
    "imagenet_10_384_t4": "imagenet_logs_Max-Former-10-384-T4.csv",
    "imagenet_10_512_t1": "imagenet_logs_Max-Former-10-512-T1.csv",
    "imagenet_10_768_t1": "imagenet_logs_Max-Former-10-768-T1.csv",
    "imagenet_10_768_t4": "imagenet_logs_Max-Former-10-768-T4.csv",
}


@dataclass(frozen=True)
class PaperRow:
    table: str
    model: str  # registered name
    kwargs: tuple  # creation kwargs, e.g. (("num_classes", 100),)
    setting: str  # dataset column
    params_m: Optional[float]
    T: Optional[int] = None
    energy_mj: Optional[float] = None
    top1: Optional[float] = None


def _kw(**k):
    return tuple(sorted(k.items()))


# Numbers as printed in the NeurIPS version (docs: shared spec paper.md §4, §6).
PAPER_ROWS: List[PaperRow] = [
    PaperRow("2", "maxformer_cifar", _kw(num_classes=10), "CIFAR-10", 6.57, 4, None, 97.04),
    PaperRow("2", "maxformer_cifar", _kw(num_classes=100), "CIFAR-100", 6.60, 4, None, 82.65),
    PaperRow("2", "ms_qkformer_cifar", _kw(num_classes=10), "CIFAR-10", 6.74, 4, None, 96.84),
    PaperRow("2", "ms_qkformer_cifar", _kw(num_classes=100), "CIFAR-100", 6.74, 4, None, 81.57),
    PaperRow("2", "spikformer_4_384", _kw(num_classes=10), "CIFAR-10", 9.32, 4, None, 95.51),
    PaperRow("2", "spikformer_4_384", _kw(num_classes=100), "CIFAR-100", 9.32, 4, None, 78.21),
    PaperRow("2", "maxformer_dvs", _kw(num_classes=10), "CIFAR10-DVS", 1.45, 16, None, 84.2),
    PaperRow("2", "maxformer_dvs", _kw(num_classes=11), "DVS128", 1.45, 16, None, 98.6),
    PaperRow("2", "ms_qkformer_dvs", _kw(num_classes=10), "CIFAR10-DVS", 1.50, 16, None, 82.3),
    PaperRow("2", "spikformer_2_256", _kw(num_classes=10), "CIFAR10-DVS", 2.57, 16, None, 80.9),
    PaperRow("3", "maxformer_10_384", _kw(T=4), "ImageNet", 16.23, 4, 4.89, 77.82),
    PaperRow("3", "maxformer_10_512", _kw(T=1), "ImageNet", 28.65, 1, 2.50, 75.47),
    PaperRow("3", "maxformer_10_512", _kw(T=4), "ImageNet", 28.65, 4, 7.49, 79.86),
    PaperRow("3", "maxformer_10_768", _kw(T=1), "ImageNet", 63.99, 1, 5.27, 78.60),
    PaperRow("3", "maxformer_10_768", _kw(T=4), "ImageNet", 63.99, 4, 14.87, 82.39),
    PaperRow("3", "ms_qkformer_10_384", _kw(T=4), "ImageNet", 16.47, 4, 5.52, 76.48),
    PaperRow("3", "ms_qkformer_10_768", _kw(T=1), "ImageNet", 64.96, 1, 6.79, 77.78),
    PaperRow("3", "spikformer_8_384", _kw(T=4), "ImageNet", 16.81, 4, 7.73, 70.24),
    PaperRow("3", "spikformer_8_768", _kw(T=4), "ImageNet", 66.34, 4, 21.48, 74.81),
    PaperRow("5", "ms_resnet18", _kw(num_classes=10), "CIFAR-10 [3,3,2]", 12.50, 4, None, 94.92),
    PaperRow("5", "max_resnet18", _kw(num_classes=10), "CIFAR-10 [3,3,2]", 12.50, 4, None, 97.17),
    PaperRow("5", "max_resnet18", _kw(num_classes=100), "CIFAR-100 [3,3,2]", 12.50, 4, None, 83.06),
    PaperRow("5", "max_resnet18_2222", _kw(num_classes=10), "CIFAR-10 [2,2,2,2]", 11.22, 4, None, 96.81),
    PaperRow("5", "max_resnet18_2222", _kw(num_classes=100), "CIFAR-100 [2,2,2,2]", 11.22, 4, None, 81.54),
]


def count_params(name: str, **kwargs) -> int:
    """Trainable parameters of ``models.build_model(name, **kwargs)`` (built on the meta device)."""
    try:
        model = build_model(name, meta=True, **kwargs)
    except ModelError:
        raise
    except Exception:  # some init may not support meta tensors: fall back to a real build
        model = build_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def match_mark(ours_m: float, paper_m: Optional[float]) -> str:
    """✓ if the paper's 2-decimal number is ours rounded or truncated, ≈ within 1 %, else ✗."""
    if paper_m is None:
        return ""
    if abs(round(ours_m, 2) - paper_m) < 1e-9 or abs(math.floor(ours_m * 100) / 100 - paper_m) < 1e-9:
        return "✓"
    return "≈" if abs(ours_m - paper_m) / paper_m < 0.01 else "✗"


def params_table(checkpoints: Dict[str, str], img_size: Optional[int] = None, batches: int = 1) -> List[dict]:
    """Rows of the parameter (and energy) comparison, one per paper row, then unlisted models."""
    rows = []
    cache: Dict[tuple, int] = {}
    for r in PAPER_ROWS:
        key = (r.model, tuple(k for k in r.kwargs if k[0] != "T"))
        if key not in cache:
            cache[key] = count_params(r.model, **dict(key[1]))
        n = cache[key]
        row = dict(table=r.table, model=r.model, setting=r.setting, T=r.T, params=n, params_m=n / 1e6,
                   paper_params_m=r.params_m, match=match_mark(n / 1e6, r.params_m),
                   paper_energy_mj=r.energy_mj, energy_mj=None, paper_top1=r.top1)
        ck = checkpoints.get(f"{r.model}@T{r.T}") or checkpoints.get(r.model)
        if ck and r.energy_mj is not None:
            row["energy_mj"] = _energy(r.model, ck, r.T, img_size, batches)
        rows.append(row)

    listed = {r.model for r in PAPER_ROWS}
    for name in models.list_our_models():
        if name not in listed:
            n = count_params(name)
            rows.append(dict(table="-", model=name, setting="(not in the paper's tables)", T=None, params=n,
                             params_m=n / 1e6, paper_params_m=None, match="", paper_energy_mj=None,
                             energy_mj=None, paper_top1=None))
    return rows


def check_weights_arg(key: str, path: str) -> str:
    """``path`` of ``--weights key=path`` once ``key`` names an energy row of Table 3 (``NAME`` or ``NAME@T4``)
    and the file reads as a checkpoint (``ConfigError`` / ``CheckpointError`` otherwise)."""
    name, at, t = key.partition("@T")
    rows = [r for r in PAPER_ROWS if r.energy_mj is not None]
    Ts = sorted({r.T for r in rows if r.model == name})
    if not Ts:
        names = ", ".join(dict.fromkeys(r.model for r in rows))
        raise ConfigError(f"--weights {key}=...: the paper quotes energy only for {names} (Table 3); "
                         f"for another model use python -m utils.analysis.energy --model NAME --checkpoint FILE")
    if at and (not t.isdigit() or int(t) not in Ts):
        raise ConfigError(f"--weights {key}=...: Table 3 has {name} at " + ", ".join(f"{name}@T{T}" for T in Ts))
    read_checkpoint(path)  # a missing, truncated or non-checkpoint file is named now, not after the table
    return path


def _energy(name: str, checkpoint: str, T: int, img_size: Optional[int], batches: int) -> float:
    model = load_model(name, checkpoint, T=T)
    shape = input_spec(model).shape(1, img_size, T)
    report = measure_energy(model, synthetic_batches(shape, batches), T=T, model_name=name)
    return report.energy_mj


def format_rows(rows: List[dict]) -> str:
    out = [f"{'Table':5s} {'model':20s} {'setting':22s} {'T':>3s} {'params (M)':>11s} {'paper':>7s} {'':2s}"
           f" {'E (mJ)':>8s} {'paper E':>8s} {'paper top-1':>11s}"]
    for r in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        out.append(f"{r['table']:5s} {r['model']:20s} {r['setting'][:22]:22s} {fmt(r['T'], 'd'):>3s} "
                   f"{r['params_m']:11.4f} {fmt(r['paper_params_m'], '.2f'):>7s} {r['match']:2s} "
                   f"{fmt(r['energy_mj'], '.2f'):>8s} {fmt(r['paper_energy_mj'], '.2f'):>8s} "
                   f"{fmt(r['paper_top1'], '.2f'):>11s}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- log comparison
def read_curve(path: str) -> Dict[str, List[float]]:
    """Columns of a per-epoch CSV as float lists; the authors' ``Step``/``val_acc1``/``val_loss``
    are renamed to ``epoch``/``eval_top1``/``eval_loss``."""
    if not os.path.exists(path):
        raise SystemExit(f"log file {path!r} does not exist")
    rename = {"Step": "epoch", "val_acc1": "eval_top1", "val_loss": "eval_loss", "train_acc1": "train_top1"}
    cols: Dict[str, List[float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    try:
                        cols.setdefault(rename.get(k, k), []).append(float(v))
                    except (TypeError, ValueError):
                        pass
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            head = f.read(4)
        what = "a checkpoint (torch.save file)" if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" else "binary"
        raise SystemExit(f"{path} is {what}, not a CSV log: compare-log reads per-epoch CSV logs (a run's "
                         "summary.csv, or the authors' logs named by --reference)") from None
    if "epoch" not in cols or "eval_top1" not in cols:
        raise SystemExit(f"{path}: needs columns epoch (or Step) and eval_top1 (or val_acc1); found {sorted(cols)}")
    return cols


def reference_path(name: str) -> str:
    if os.path.exists(name):
        return name
    if name not in REFERENCE_LOGS:
        raise SystemExit(f"unknown reference log {name!r}; choose one of {', '.join(REFERENCE_LOGS)}"
                         " or give a CSV path")
    return os.path.join(REFERENCE_LOG_DIR, REFERENCE_LOGS[name])


def compare_logs(run: str, reference: str, out: str) -> dict:
    """Overlay ``run`` on the authors' ``reference`` curves; write ``out`` (PNG); return best/last numbers."""
    plt = pyplot()

    ours, ref = read_curve(run), read_curve(reference_path(reference))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    axes[0].plot(ref["epoch"], ref["eval_top1"], label=f"authors ({reference})", color="gray")
    axes[0].plot(ours["epoch"], ours["eval_top1"], label="this run", color="tab:blue")
    axes[0].set_ylabel("eval top-1 (%)")
    for key, style in (("eval_loss", "-"), ("train_loss", "--")):
        if key in ref:
            axes[1].plot(ref["epoch"], ref[key], style, color="gray", label=f"authors {key}")
        if key in ours:
            axes[1].plot(ours["epoch"], ours[key], style, color="tab:blue", label=f"this run {key}")
    axes[1].set_ylabel("loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    summary = {
        "run_best": max(ours["eval_top1"]), "run_last": ours["eval_top1"][-1], "run_epochs": len(ours["epoch"]),
        "ref_best": max(ref["eval_top1"]), "ref_last": ref["eval_top1"][-1], "ref_epochs": len(ref["epoch"]),
    }
    n = min(len(ours["eval_top1"]), len(ref["eval_top1"]))
    summary["ref_at_run_last_epoch"] = ref["eval_top1"][n - 1]
    return summary


# ----------------------------------------------------------------------------- sweep results vs the paper
DATASET_SETTINGS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar10dvs": "CIFAR10-DVS",
                    "dvsgesture": "DVS128", "imagenet": "ImageNet"}
_CLAIM = re.compile(r"paper table (\d+)([^:]*):\s*([\d.]+)\s*%", re.IGNORECASE)


@dataclass(frozen=True)
class PaperClaim:
    table: str
    row: str  # the paper's row name, as we label it
    top1: float


def config_claims(config: str) -> List[PaperClaim]:
    """The paper's numbers a config's header quotes (``# Paper Table 4: 82.23 % top-1.``)."""
    stem = os.path.splitext(os.path.basename(config))[0]
    claims = []
    if not os.path.isfile(config):
        return claims
    with open(config) as f:
        for line in f:
            if not line.startswith("#"):
                break
            for table, qualifier, top1 in _CLAIM.findall(line):
                qualifier = qualifier.strip().strip(",")
                claims.append(PaperClaim(table, f"{stem} {qualifier}".strip(), float(top1)))
    return claims


def paper_claims(args: dict) -> List[PaperClaim]:
    """Paper rows a run (its ``args.yaml``) reproduces: its config header's claims when the run kept the
    config's model, T and model_kwargs; otherwise the matching row of :data:`PAPER_ROWS` (Tables 2, 3, 5)."""
    config = args.get("config") or ""
    try:
        own = load_yaml(config) if config else {}
    except ConfigError:
        own = {}
    same = all(args.get(k) == own.get(k, args.get(k)) for k in ("model", "T")) and \
        (args.get("model_kwargs") or {}) == (own.get("model_kwargs") or {})
    if same and config_claims(config):
        return config_claims(config)
    if args.get("model_kwargs"):
        return []
    setting = DATASET_SETTINGS.get(args.get("dataset"), "?")
    return [PaperClaim(r.table, f"{r.model} {r.setting} T{r.T}", r.top1) for r in PAPER_ROWS
            if r.model == args.get("model") and r.setting.startswith(setting) and r.T == args.get("T")
            and r.top1 is not None and dict(r.kwargs).get("num_classes", args.get("num_classes")) in (
                args.get("num_classes"), (args.get("run_info") or {}).get("num_classes"))]


# args.yaml keys that say where a run lives or how it was started, not what it trains
NOT_THE_RUN = ("output", "experiment", "config", "resume", "overwrite", "run_info")


def run_identity(args: dict) -> str:
    """What makes two run folders the same run: the config (seed included) without :data:`NOT_THE_RUN`."""
    return json.dumps({k: v for k, v in args.items() if k not in NOT_THE_RUN}, sort_keys=True, default=str)


def collect_runs(runs_dir: str, notes: Optional[List[str]] = None) -> Dict[str, List[dict]]:
    """Run folders under ``runs_dir`` (any depth), one per run (:func:`run_identity`), grouped by experiment name
    without its ``_s<seed>``. Folders holding the same run (copies) count once, the one furthest along; a
    line naming them is appended to ``notes``."""
    same: Dict[str, List[dict]] = {}
    for dirpath, dirnames, filenames in sorted(os.walk(runs_dir)):
        dirnames.sort()
        if "args.yaml" not in filenames:
            continue
        with open(os.path.join(dirpath, "args.yaml")) as f:
            args = yaml.safe_load(f) or {}
        run = dict(args=args, run_dir=dirpath, state=run_state(dirpath))
        same.setdefault(run_identity(args), []).append(run)
    groups: Dict[str, List[dict]] = {}
    for copies in same.values():
        run = max(copies, key=lambda r: (r["state"].state == "finished", r["state"].epochs_done))
        if len(copies) > 1 and notes is not None:
            notes.append(f"{', '.join(r['run_dir'] for r in copies)} hold the same run (same config, seed "
                         f"{run['args'].get('seed')}): counted once, as {run['run_dir']}")
        name = re.sub(r"_s\d+$", "", run["args"].get("experiment") or os.path.basename(run["run_dir"]))
        groups.setdefault(name, []).append(run)
    return groups


def result_rows(runs_dir: str, table: Optional[str] = None, notes: Optional[List[str]] = None) -> List[dict]:
    """One row per (config, paper row): our best top-1 as mean ± std over seeds beside the paper's."""
    rows = []
    for name, runs in collect_runs(runs_dir, notes).items():
        claims = paper_claims(runs[0]["args"]) or [PaperClaim("-", name, float("nan"))]
        tops = [r["state"].best_top1 for r in runs if r["state"].best_top1 is not None]
        done = [r["state"].epochs_done for r in runs]
        planned = [r["state"].total_epochs for r in runs if r["state"].total_epochs is not None]
        n_finished = sum(r["state"].state == "finished" for r in runs)
        mean = statistics.fmean(tops) if tops else None
        for c in claims:
            if table is not None and c.table != table:
                continue
            paper = None if math.isnan(c.top1) else c.top1
            rows.append(dict(
                table=c.table, row=c.row, experiment=name, paper_top1=paper, mean_top1=mean,
                std_top1=statistics.stdev(tops) if len(tops) > 1 else None, n_seeds=len(tops),
                seeds=" ".join(str(r["args"].get("seed")) for r in runs),
                epochs_done=min(done), epochs_planned=max(planned) if planned else None,
                diff=None if mean is None or paper is None else mean - paper,
                status=("finished" if n_finished == len(runs)
                        else f"unfinished ({n_finished}/{len(runs)} runs finished)")))
    rows.sort(key=lambda r: (r["table"] == "-", r["table"], r["row"]))
    return rows


def _num(v: Optional[float], fmt: str = ".2f", signed: bool = False) -> str:
    if v is None:
        return "–"
    return format(v, ("+" if signed else "") + fmt)


def mean_std_text(row: dict) -> str:
    return f"{_num(row['mean_top1'])} ± {_num(row['std_top1'])}"


def results_markdown(rows: Sequence[dict]) -> str:
    out = ["| table | paper row | paper top-1 | ours top-1 (mean ± std) | seeds | epochs done/planned | diff"
           " | status |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        status = r["status"] if r["status"] == "finished" else f"**{r['status']}**"
        out.append(f"| {r['table']} | {r['row']} | {_num(r['paper_top1'])} | {mean_std_text(r)} | {r['n_seeds']} | "
                   f"{r['epochs_done']}/{r['epochs_planned'] if r['epochs_planned'] is not None else '?'} | "
                   f"{_num(r['diff'], signed=True)} | {status} |")
    return "\n".join(out)


def results_figure(rows: Sequence[dict], out: str, title: str = "") -> None:
    """Ours (mean, error bar = std over seeds) beside the paper, one line per row; unfinished hollow."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(rows)), dpi=90)
    y = list(range(len(rows)))[::-1]
    for yi, r in zip(y, rows):
        if r["paper_top1"] is not None:
            ax.plot(r["paper_top1"], yi, "x", color="black", label="paper" if yi == y[0] else None)
        if r["mean_top1"] is not None:
            done = r["status"] == "finished"
            ax.errorbar(r["mean_top1"], yi, xerr=r["std_top1"] or 0, fmt="o", capsize=3, color="tab:blue",
                        mfc="tab:blue" if done else "white", label=None)
    ax.plot([], [], "o", color="tab:blue", label="ours (mean ± std over seeds)")
    ax.plot([], [], "o", color="tab:blue", mfc="white", label="ours, unfinished")
    ax.set_yticks(y)
    ax.set_yticklabels([f"T{r['table']} {r['row']}" for r in rows], fontsize=7)
    ax.set_xlabel("top-1 (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def write_results(rows: Sequence[dict], out_dir: str, stem: str, title: str = "", overwrite: bool = False) -> List[str]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.png`` into ``out_dir``; returns the paths. Files there that
    an earlier call did not write are refused (:mod:`utils.io.outputs`) unless ``overwrite``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "csv", "png")]
    check_outputs({"table": paths[0], "CSV": paths[1], "figure": paths[2]}, overwrite)
    with open(paths[0], "w") as f:
        f.write((f"# {title}\n\n" if title else "") + results_markdown(rows) + "\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    results_figure(rows, paths[2], title)
    record_outputs(*paths)
    return paths


MODES = ("params", "runs", "compare-log")


def _legacy_argv(argv: List[str]) -> List[str]:
    """The mode is a subcommand; without one, ``--runs DIR`` means ``runs`` and anything else ``params``."""
    if argv and (argv[0] in MODES or argv[0] in ("-h", "--help")):
        return argv
    if any(a == "--runs" or a.startswith("--runs=") for a in argv):
        return ["runs", *argv]
    return ["params", *argv]


def build_parser() -> argparse.ArgumentParser:
    """``python -m utils.analysis.tables {params,runs,compare-log}`` (``params`` when no mode is given)."""
    p = Parser(prog="python -m utils.analysis.tables", legacy=_legacy_argv,
               description="Tables of the paper beside ours, in three modes (without one: params); "
                           "python -m utils.analysis.tables MODE -h lists a mode's options.")
    sub = p.add_subparsers(dest="mode", metavar="{params,runs,compare-log}")
    a = sub.add_parser("params", help="parameter counts (and energy) beside the paper's Tables 2, 3, 5")
    a.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="NAME=PATH or NAME@T4=PATH: estimate energy for that model (synthetic input); repeatable")
    a.add_alias("--checkpoint", of="--weights", action="append")
    a.add_argument("--img-size", type=positive_int, default=None)
    a.add_argument("--csv", default=None, type=writable_file, help="also write the table to this CSV")
    r = sub.add_parser("runs", help="best top-1 mean ± std over seeds per config of the runs under --runs DIR; "
                                    "writes Markdown, CSV and a figure")
    r.add_argument("--runs", required=True, type=existing_folder,
                   help="folder of run folders (e.g. a sweep's --output)")
    r.add_argument("--table", choices=("2", "3", "4", "5", "7"), default=None, help="only this table of the paper")
    r.add_argument("-o", "--output", default=None, type=writable_folder,
                   help="folder for table<N>.md/.csv/.png (default: --runs)")
    r.add_alias("--out", of="--output")
    c = sub.add_parser("compare-log", help="overlay a run's summary.csv on the authors' per-epoch curves")
    c.add_argument("--run", required=True, type=readable_file,
                   help="summary.csv of a run (epoch, eval_top1, eval_loss, train_loss)")
    c.add_argument("--reference", required=True, help=f"one of {', '.join(REFERENCE_LOGS)} or a CSV path")
    c.add_argument("--figure", default=None, type=writable_file, help="PNG path (default: next to the run's CSV)")
    c.add_alias("--out", of="--figure")
    for s in (a, r, c):
        s.add_bool("--overwrite", help="replace output files this command did not write (it replaces its own anyway)")
    return p


def results_main(argv: Sequence[str]) -> int:
    """``python -m utils.analysis.tables runs --runs DIR ...`` (the ``runs`` mode)."""
    argv = list(argv)
    a = build_parser().parse_args(argv if argv[:1] == ["runs"] else ["runs", *argv])
    return _runs(a)


def _runs(a) -> int:
    if not os.path.isdir(a.runs):
        print(f"error: --runs {a.runs} is not a folder", file=sys.stderr)
        return 2
    notes: List[str] = []
    rows = result_rows(a.runs, a.table, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not rows:
        what = f"for Table {a.table}" if a.table else ""
        print(f"error: no run folders (with args.yaml) {what} under {a.runs}", file=sys.stderr)
        return 2
    stem = f"table{a.table}" if a.table else "results"
    title = f"Paper Table {a.table}: ours vs paper" if a.table else "Runs vs the paper"
    print(results_markdown(rows))
    unfinished = sum(r["status"] != "finished" for r in rows)
    if unfinished:
        print(f"\n{unfinished} of {len(rows)} rows are unfinished (means over the epochs done so far).")
    print("wrote " + ", ".join(write_results(rows, a.output or a.runs, stem, title, a.overwrite)))
    return 0


def _compare_log(a) -> int:
    out = a.figure or os.path.join(os.path.dirname(os.path.abspath(a.run)),
                                   f"compare_{os.path.basename(a.reference).split('.')[0]}.png")
    check_outputs({"--figure": out}, a.overwrite, inputs=(a.run, a.reference))
    s = compare_logs(a.run, a.reference, out)
    record_outputs(out)
    print(f"this run: best {s['run_best']:.2f} last {s['run_last']:.2f} over {s['run_epochs']} epochs; "
          f"authors: best {s['ref_best']:.2f} last {s['ref_last']:.2f} over {s['ref_epochs']} epochs "
          f"({s['ref_at_run_last_epoch']:.2f} at this run's last epoch)")
    print(f"wrote {out}")
    return 0


def _params(a) -> int:
    if a.csv:
        check_outputs({"--csv": a.csv}, a.overwrite, inputs=[w.split("=", 1)[-1] for w in a.weights])
    ckpts = {}
    for c in a.weights:
        if "=" not in c:
            raise ConfigError(f"--weights takes NAME=PATH, got {c!r}")
        k, v = c.split("=", 1)
        ckpts[k] = check_weights_arg(k, v)
    if a.img_size and not ckpts:
        raise ConfigError("--img-size is the input size of the energy estimate, which needs --weights NAME=PATH")
    rows = params_table(ckpts, a.img_size)
    print(format_rows(rows))
    n_ok = sum(r["match"] == "✓" for r in rows)
    n_paper = sum(r["paper_params_m"] is not None for r in rows)
    print(f"\n{n_ok}/{n_paper} parameter counts match the paper (✓ rounded or truncated to its 2 decimals). "
          "The ≈ rows differ only in the classifier: the paper quotes one count for both datasets.")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        record_outputs(a.csv)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    return {"runs": _runs, "compare-log": _compare_log}.get(a.mode, _params)(a)


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
