"""Paper-table kit: our models beside the paper's Tables 2, 3 and 5, and log comparison.

``python -m utils.tables`` prints every registered model's parameter count next to the paper's
(✓ = equal at the paper's two decimals, rounded or truncated; ≈ = within 1 %; ✗ = otherwise), and
an energy estimate for models given ``--checkpoint NAME=PATH`` (see :mod:`utils.energy`).

``python -m utils.tables compare-log --run output/.../summary.csv --reference cifar100`` overlays a
run's per-epoch ``summary.csv`` (columns ``epoch, eval_top1, eval_loss, train_loss``) on the
authors' curves (shipped in ``docs/reference_logs/``) and writes a PNG.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def registered_models() -> List[str]:
    """Names of every model this repository registers with timm."""
    import timm

    import models  # noqa: F401

    names = set(timm.list_models(module="maxformer")) | set(timm.list_models(module="spikformer"))
    names |= set(timm.list_models(module="ms_resnet"))
    return sorted(names)


def count_params(name: str, **kwargs) -> int:
    """Trainable parameters of ``timm.create_model(name, **kwargs)`` (built on the meta device)."""
    import timm
    import torch

    import models  # noqa: F401

    try:
        with torch.device("meta"):
            model = timm.create_model(name, **kwargs)
    except Exception:  # some init may not support meta tensors: fall back to a real build
        model = timm.create_model(name, **kwargs)
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
    for name in registered_models():
        if name not in listed:
            n = count_params(name)
            rows.append(dict(table="-", model=name, setting="(not in the paper's tables)", T=None, params=n,
                             params_m=n / 1e6, paper_params_m=None, match="", paper_energy_mj=None,
                             energy_mj=None, paper_top1=None))
    return rows


def _energy(name: str, checkpoint: str, T: int, img_size: Optional[int], batches: int) -> float:
    from utils.energy import build_model, measure_energy, synthetic_batches

    model = build_model(name, checkpoint, T=T)
    size = img_size or 224
    report = measure_energy(model, synthetic_batches((1, 3, size, size), batches), T=T, model_name=name)
    return report.energy_mj


def format_rows(rows: List[dict]) -> str:
    out = [f"{'Table':5s} {'model':20s} {'setting':22s} {'T':>3s} {'params (M)':>11s} {'paper':>7s} {'':2s}"
           f" {'E (mJ)':>8s} {'paper E':>8s} {'paper top-1':>11s}"]
    for r in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        out.append(f"{r['table']:5s} {r['model']:20s} {r['setting'][:22]:22s} {fmt(r['T'], 'd'):>3s} "
                   f"{r['params_m']:11.4f} {fmt(r['paper_params_m'], '.2f'):>7s} {r['match']:2s} "
                   f"{fmt(r['energy_mj'], '.2f'):>8s} {fmt(r['paper_energy_mj'], '.2f'):>8s} {fmt(r['paper_top1'], '.2f'):>11s}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- log comparison
def read_curve(path: str) -> Dict[str, List[float]]:
    """Columns of a per-epoch CSV as float lists; the authors' ``Step``/``val_acc1``/``val_loss``
    are renamed to ``epoch``/``eval_top1``/``eval_loss``."""
    if not os.path.exists(path):
        raise SystemExit(f"log file {path!r} does not exist")
    rename = {"Step": "epoch", "val_acc1": "eval_top1", "val_loss": "eval_loss", "train_acc1": "train_top1"}
    cols: Dict[str, List[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    cols.setdefault(rename.get(k, k), []).append(float(v))
                except (TypeError, ValueError):
                    pass
    if "epoch" not in cols or "eval_top1" not in cols:
        raise SystemExit(f"{path}: needs columns epoch (or Step) and eval_top1 (or val_acc1); found {sorted(cols)}")
    return cols


def reference_path(name: str) -> str:
    if os.path.exists(name):
        return name
    if name not in REFERENCE_LOGS:
        raise SystemExit(f"unknown reference log {name!r}; choose one of {', '.join(REFERENCE_LOGS)} or give a CSV path")
    return os.path.join(REFERENCE_LOG_DIR, REFERENCE_LOGS[name])


def compare_logs(run: str, reference: str, out: str) -> dict:
    """Overlay ``run`` on the authors' ``reference`` curves; write ``out`` (PNG); return best/last numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare-log":
        p = argparse.ArgumentParser(prog="python -m utils.tables compare-log",
                                    description="overlay a run's summary.csv on the authors' per-epoch curves")
        p.add_argument("--run", required=True, help="summary.csv of a run (epoch, eval_top1, eval_loss, train_loss)")
        p.add_argument("--reference", required=True, help=f"one of {', '.join(REFERENCE_LOGS)} or a CSV path")
        p.add_argument("--out", default=None, help="PNG path (default: next to the run's CSV)")
        a = p.parse_args(argv[1:])
        out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.run)), f"compare_{os.path.basename(a.reference).split('.')[0]}.png")
        s = compare_logs(a.run, a.reference, out)
        print(f"this run: best {s['run_best']:.2f} last {s['run_last']:.2f} over {s['run_epochs']} epochs; "
              f"authors: best {s['ref_best']:.2f} last {s['ref_last']:.2f} over {s['ref_epochs']} epochs "
              f"({s['ref_at_run_last_epoch']:.2f} at this run's last epoch)")
        print(f"wrote {out}")
        return 0
    p = argparse.ArgumentParser(prog="python -m utils.tables",
                                description="parameter counts (and energy) of every registered model beside the paper's "
                                            "Tables 2, 3, 5; `compare-log` overlays training curves")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="NAME=PATH or NAME@T4=PATH: estimate energy for that model (synthetic input)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--csv", default=None, help="also write the table to this CSV")
    a = p.parse_args(argv)
    ckpts = {}
    for c in a.checkpoint:
        if "=" not in c:
            raise SystemExit(f"--checkpoint takes NAME=PATH, got {c!r}")
        k, v = c.split("=", 1)
        ckpts[k] = v
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
