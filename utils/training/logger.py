"""Run folder writers: ``summary.csv``, TensorBoard events, a PNG learning curve and optional W&B.

Only the main process creates a :class:`RunLogger`; every method is cheap to call every epoch.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import uuid
from typing import Any, Dict, List, Mapping, Sequence

from utils.io.atomic import atomic_write
from utils.io.figures import pyplot

__all__ = ["RunLogger", "SUMMARY_COLUMNS", "read_summary", "setup_console_logging"]

SUMMARY_COLUMNS = ["epoch", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5"]
EMA_COLUMNS = ["ema_eval_loss", "ema_eval_top1", "ema_eval_top5"]
TIME_COLUMNS = ["img_per_s", "epoch_seconds"]
_FORMATS = {"lr": "{:.6g}", "train_loss": "{:.6f}", "eval_loss": "{:.6f}", "ema_eval_loss": "{:.6f}",
            "img_per_s": "{:.1f}", "epoch_seconds": "{:.2f}"}

_log = logging.getLogger("train")


def setup_console_logging(main: bool) -> logging.Logger:
    """Plain ``print``-like logging on the main process, warnings only elsewhere."""
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s", force=True)
    return _log


def read_summary(path: str) -> List[Dict[str, str]]:
    """Rows of a ``summary.csv`` as dicts of strings ([] if the file does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return _FORMATS.get(key, "{:.4f}").format(v)
    return str(v)


def _epoch_of(row: Mapping[str, Any]):
    """The epoch of a ``summary.csv`` row, or None when the row is cut short or damaged."""
    try:
        epoch = int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None
    complete = all(row.get(k) not in (None, "") for k in SUMMARY_COLUMNS)
    return epoch if complete else None


class RunLogger:
    """Writes the per-epoch outputs of one run folder.

    A resumed run (``start_epoch`` > 0) reconciles ``summary.csv`` with the checkpoint it resumes from:
    rows of epochs that will be re-run are dropped, and rows missing, cut short or damaged are restored
    from ``history`` (the rows the checkpoint carries). ``self.restored`` and ``self.missing`` list the
    epochs restored and those neither file holds.
    """

    def __init__(self, run_dir: str, cfg, ema: bool = False, start_epoch: int = 0,
                 history: Sequence[Mapping[str, Any]] = ()):
        self.run_dir = run_dir
        self.cfg = cfg
        self.columns = SUMMARY_COLUMNS + (EMA_COLUMNS if ema else []) + TIME_COLUMNS
        self.summary_path = os.path.join(run_dir, "summary.csv")
        self.plot_path = os.path.join(run_dir, "learning_curve.png")
        os.makedirs(run_dir, exist_ok=True)
        on_disk = {}
        for r in read_summary(self.summary_path):
            epoch = _epoch_of(r)
            if epoch is not None and epoch < start_epoch:
                on_disk[epoch] = r
        saved = {int(h["epoch"]): h for h in history if int(h["epoch"]) < start_epoch}
        self.restored = sorted(e for e in saved if e not in on_disk)
        rows = {**on_disk, **{e: self._format(h) for e, h in saved.items()}}  # the checkpoint's rows win
        self.missing = [e for e in range(start_epoch) if e not in rows]
        self.rows: List[Dict[str, Any]] = [rows[e] for e in sorted(rows)]
        self._rewrite()
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=start_epoch or None)
            except Exception as err:  # tensorboard missing: warn, keep training
                _log.warning(f"TensorBoard disabled ({err}); pip install tensorboard to enable it")
        self.wandb = None
        if cfg.log_wandb:
            self.wandb = self._init_wandb(cfg, start_epoch)

    # ------------------------------------------------------------------
    def _init_wandb(self, cfg, start_epoch):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("log_wandb is true but wandb is not installed: pip install wandb "
                               "(or set log_wandb: false)") from None
        project = cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "maxformer"
        entity = cfg.wandb_entity or os.environ.get("WANDB_ENTITY") or None
        run = wandb.init(project=project.replace("/", "-"), entity=entity, name=cfg.experiment,
                         dir=self.run_dir, config=vars(cfg), resume="allow" if start_epoch else None,
                         id=self._wandb_id())
        return run

    def _wandb_id(self):
        path = os.path.join(self.run_dir, "wandb_id.txt")
        if os.path.isfile(path):
            return open(path).read().strip()

        rid = uuid.uuid4().hex[:12]
        with open(path, "w") as f:
            f.write(rid)
        return rid

    def _format(self, metrics: Mapping[str, Any]) -> Dict[str, str]:
        return {k: _fmt(k, metrics.get(k)) for k in self.columns}

    def _rewrite(self):
        """``summary.csv`` with every row, written atomically (a full disk leaves the previous file)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: r.get(k, "") for k in self.columns})
        atomic_write(self.summary_path, buf.getvalue())

    # ------------------------------------------------------------------
    def log_step(self, step: int, loss: float, lr: float) -> None:
        """Per-step scalars (called every ``log_interval`` steps)."""
        if self.tb is not None:
            self.tb.add_scalar("train/loss_step", loss, step)
            self.tb.add_scalar("train/lr_step", lr, step)

    def log_epoch(self, metrics: Dict[str, Any]) -> None:
        """Add one ``summary.csv`` row (the file is rewritten atomically: a few KB) and push the epoch to
        TensorBoard / W&B / the PNG. A failed ``summary.csv`` write raises FileWriteError; the optional
        outputs only warn."""
        epoch = int(metrics["epoch"])
        self.rows = [r for r in self.rows if _epoch_of(r) != epoch] + [self._format(metrics)]
        self._rewrite()
        scalars = {k: v for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float)) and v is not None}
        try:
            if self.tb is not None:
                for k, v in scalars.items():
                    group = "train" if k.startswith("train") or k == "lr" else "time" if k in TIME_COLUMNS else "eval"
                    self.tb.add_scalar(f"{group}/{k}", v, epoch)
                self.tb.flush()
            if self.cfg.plot:
                self.plot()
        except OSError as err:
            _log.warning(f"warning: TensorBoard events / learning curve of epoch {epoch} not written ({err})")
        if self.wandb is not None:
            self.wandb.log(scalars, step=epoch)

    def plot(self) -> None:
        """Loss and top-1 per epoch as ``learning_curve.png`` (written atomically)."""
        try:
            plt = pyplot()
        except Exception as err:
            _log.warning(f"learning curve skipped ({err})")
            return

        def col(name):
            return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in self.rows]

        ep = col("epoch")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
        ax1.plot(ep, col("train_loss"), label="train (soft targets)" if self.cfg.mixup else "train")
        ax1.plot(ep, col("eval_loss"), label="eval")
        ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
        ax2.plot(ep, col("eval_top1"), label="top-1")
        if "ema_eval_top1" in self.columns:
            ax2.plot(ep, col("ema_eval_top1"), label="EMA top-1")
        ax2.set_xlabel("epoch"), ax2.set_ylabel("eval accuracy (%)"), ax2.legend(), ax2.grid(alpha=0.3)
        fig.suptitle(f"{self.cfg.experiment} ({self.cfg.model})")
        fig.tight_layout()
        try:
            atomic_write(self.plot_path, lambda f: fig.savefig(f, format="png"))
        finally:
            plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
