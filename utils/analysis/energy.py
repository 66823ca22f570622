"""Firing rates, synaptic operations (SOPs) and energy of spiking networks (paper App. B).

Method (the paper's Eq. 22-24, following Spikformer / Spike-driven Transformer):

* every convolution, linear layer and matrix product is visited at the aten level (a spikingjelly
  ``DispatchCounterMode`` with :class:`PaperOpCounter`), so attention products such as SSA's
  ``q @ k^T`` and ``attn @ v`` are counted without hooks on any particular model;
* ``FLOPs`` means multiply-accumulates (MACs) per image and time step, the convention of the energy
  tables the paper compares with (PVT-Large: 9.8 GMACs x 4.6 pJ = 45.08 mJ in Table 3);
* an operation whose data operand is a spike tensor (every value in {0, 1}, checked on the actual
  tensor) costs ``SOPs = r x T x FLOPs`` accumulates (AC, 0.9 pJ), ``r`` being the firing rate of that
  operand measured over the batch and all T steps; everything else costs MACs (4.6 pJ): the first
  convolution on the image, Embed-Orig's first convolution, event-count inputs, products of two
  real-valued tensors;
* BatchNorm is taken as folded into the preceding convolution and costs nothing; so do neuron
  updates, pooling, residual (membrane-shortcut) additions and the attention scale;
* ``E_SNN = 4.6 pJ x MAC-FLOPs + 0.9 pJ x sum(SOPs)``; ``E_ANN = 4.6 pJ x all FLOPs of one time step``.

Decisions for the cases the paper leaves open:

* **Membrane-shortcut sums.** With the membrane shortcut every conv/linear still reads LIF output, so
  the sums never reach a weight layer. A weight layer fed by a non-binary integer tensor (pre-spike
  shortcut sums in {0, 1, 2}, event-frame counts) is counted as MAC by default; with
  ``integer_inputs_as_ac=True`` it is counted as ``mean(value) x FLOPs`` accumulates instead (a
  count k triggers k accumulates).
* **Both operands binary** (e.g. ``k^T @ v`` of QKFormer-style attention): ``SOPs = r_left x FLOPs``,
  i.e. every spike of the left operand triggers one accumulate per output column.

Cross-check with spikingjelly 2.0 ``op_counter`` (``crosscheck=True`` runs its ``MACCounter`` and
``SynOpCounter`` in the same forward pass, BatchNorm ignored): the MAC counts agree exactly. SynOps
differ by convention: spikingjelly counts the weight uses that really happen — a spike near a
zero-padded border reaches fewer outputs, and a product of two spike tensors costs only the
coincidences (``out.sum()``) — while the paper's ``r x FLOPs`` spreads the mean rate uniformly over
every output. For linear layers and 1x1 convolutions the two are identical; for unpadded k x k
convolutions they agree in expectation over spike positions, and with zero padding the paper's count
is higher by the share of kernel taps that land on the padding (a few % at 8x8 feature maps).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import os
import re
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from torch.utils.data import DataLoader

from models import ModelError, input_spec, parse_model_kwargs
from models.neurons import reset_net
from utils.analysis.op_counter import (DEFAULT_CONFIG, TABLE9_COLUMNS, EnergyConfig, FiringRateMonitor, LayerOps,
                                       PaperOpCounter, table9_group)
from utils.config import parse_config
from utils.config.cli import (Parser, non_negative_float, non_negative_int, number_type,  # noqa: F401 (re-exported)
                              positive_float, positive_int, readable_file, run_main, writable_folder)
from utils.data import create_datasets
from utils.errors import INPUT_ERRORS
from utils.io.figures import pyplot
from utils.io.outputs import check_outputs, record_outputs
from utils.training.checkpoint import load_model

__all__ = [
    "EnergyConfig",
    "LayerOps",
    "EnergyReport",
    "PaperOpCounter",
    "FiringRateMonitor",
    "measure_energy",
    "table9_group",
    "TABLE9_COLUMNS",
]


# ----------------------------------------------------------------------------- report
@dataclasses.dataclass
class EnergyReport:
    """Per-image operation counts and energies of one measurement (all energies in mJ per image)."""

    model: str
    T: int
    batch_size: int
    input: str
    config: EnergyConfig
    layers: List[LayerOps]
    firing_rates: Dict[str, float]
    groups: Dict[str, str]
    sj_crosscheck: Optional[dict] = None

    def _per_image(self, v: float) -> float:
        return v / self.batch_size

    @property
    def mac_flops(self) -> float:
        return self._per_image(sum(layer.mac_flops for layer in self.layers))

    @property
    def sops(self) -> float:
        return self._per_image(sum(layer.sops for layer in self.layers))

    @property
    def flops_per_step(self) -> float:
        """Dense MACs of one image and one time step (the ANN-equivalent FLOPs)."""
        return self._per_image(sum(layer.macs for layer in self.layers)) / self.T

    def layer_energy_mj(self, layer: LayerOps) -> float:
        c = self.config
        return self._per_image(c.e_mac_pj * layer.mac_flops + c.e_ac_pj * layer.sops) * 1e-9

    @property
    def energy_mj(self) -> float:
        return sum(self.layer_energy_mj(layer) for layer in self.layers)

    @property
    def ann_energy_mj(self) -> float:
        return self.config.e_mac_pj * self.flops_per_step * 1e-9

    def per_group(self) -> "OrderedDict[str, float]":
        """Energy (mJ/image) per Table 9 column, in the paper's order."""
        acc: Dict[str, float] = defaultdict(float)
        for layer in self.layers:
            acc[self.groups[layer.name]] += self.layer_energy_mj(layer)

        def key(g):
            m = re.match(r"S(\d+) (\w+)", g)
            if m:
                return (int(m.group(1)), TABLE9_COLUMNS.index(m.group(2)) if m.group(2) in TABLE9_COLUMNS else 9)
            return (99, 0 if g == "classifier" else 1)

        return OrderedDict((g, acc[g]) for g in sorted(acc, key=key))

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "T": self.T,
            "batch_size": self.batch_size,
            "input": self.input,
            "config": dataclasses.asdict(self.config),
            "energy_mj_per_image": self.energy_mj,
            "ann_energy_mj_per_image": self.ann_energy_mj,
            "mac_flops_per_image": self.mac_flops,
            "sops_per_image": self.sops,
            "flops_per_image_per_step": self.flops_per_step,
            "per_group_mj": self.per_group(),
            "layers": [
                {
                    "name": layer.name,
                    "group": self.groups[layer.name],
                    "kind": layer.kind,
                    "input": layer.input,
                    "input_rate": layer.input_rate,
                    "flops_per_step": self._per_image(layer.macs) / self.T,
                    "mac_flops": self._per_image(layer.mac_flops),
                    "sops": self._per_image(layer.sops),
                    "energy_mj": self.layer_energy_mj(layer),
                }
                for layer in self.layers
            ],
            "firing_rates": self.firing_rates,
            "sj_crosscheck": self.sj_crosscheck,
        }

    def format_table(self, per_layer: bool = True) -> str:
        lines = []
        if per_layer:
            lines.append(f"{'layer':58s} {'group':13s} {'input':6s} {'rate':>6s} {'GFLOPs/T':>9s} "
                         f"{'GSOPs':>8s} {'mJ':>8s}")
            for layer in self.layers:
                r = layer.input_rate
                lines.append(
                    f"{layer.name[:58]:58s} {self.groups[layer.name]:13s} {layer.input[:6]:6s} "
                    f"{'' if r is None else f'{r:.3f}':>6s} {self._per_image(layer.macs) / self.T / 1e9:9.4f} "
                    f"{self._per_image(layer.sops) / 1e9:8.4f} {self.layer_energy_mj(layer):8.4f}"
                )
            lines.append("")
        groups = ", ".join(f"{g} {v:.3f}" for g, v in self.per_group().items())
        lines.append(f"Table 9 breakdown (mJ / image): {groups}")
        lines.append(
            f"{self.model} T={self.T} [{self.input}]: E_SNN = {self.energy_mj:.3f} mJ/image "
            f"(MAC-FLOPs {self.mac_flops / 1e9:.3f} G x {self.config.e_mac_pj} pJ + SOPs {self.sops / 1e9:.3f} G x "
            f"{self.config.e_ac_pj} pJ); ANN equivalent {self.ann_energy_mj:.3f} mJ "
            f"({self.flops_per_step / 1e9:.3f} GFLOPs x {self.config.e_mac_pj} pJ)"
        )
        if self.sj_crosscheck:
            c = self.sj_crosscheck
            lines.append(
                f"spikingjelly op_counter cross-check: MACs {c['mac'] / 1e9:.4f} G "
                f"(ours {self.mac_flops / 1e9:.4f} G), "
                f"SynOps {c['synop'] / 1e9:.4f} G (ours {self.sops / 1e9:.4f} G, ratio {c['synop_ratio']:.4f}), "
                f"compute energy {c['energy_compute_mj']:.4f} mJ"
            )
        return "\n".join(lines)

    def write_csv(self, path: str) -> None:
        d = self.as_dict()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(d["layers"][0]) if d["layers"] else ["name"])
            w.writeheader()
            w.writerows(d["layers"])


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable) -> int:
    """Set every BatchNorm's running statistics to the cumulative mean/variance over ``batches``.

    A randomly initialised network in eval mode has identity BatchNorms, and its spikes die out
    after a few layers; calibrating BN on the input (train-mode passes, no weight update) gives
    the unit-variance pre-activations a trained network has, so a random-weight energy estimate
    has plausible firing rates. Returns the number of batches used.
    """
    net = _unwrap(model)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = net.training
    net.train()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            net(x.to(_device(net)))
            reset_net(net)
            n += 1
    finally:
        for m, mom in saved:
            m.momentum = mom
        net.train(was_training)
    return n


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def measure_energy(
    model: nn.Module,
    batches: Iterable,
    *,
    T: Optional[int] = None,
    config: EnergyConfig = DEFAULT_CONFIG,
    crosscheck: bool = False,
    input_desc: str = "",
    model_name: Optional[str] = None,
    max_batches: Optional[int] = None,
) -> EnergyReport:
    """Count MACs/SOPs and firing rates of ``model`` over ``batches`` and return an :class:`EnergyReport`.

    ``batches`` yields model inputs (``[B,C,H,W]`` images or ``[B,T,C,H,W]`` frames, or ``(input,
    target)`` pairs). The model runs in eval mode; neuron state is reset after every batch. ``T``
    defaults to ``model.T`` (needed only to express FLOPs per time step). ``crosscheck`` also runs
    spikingjelly's ``MACCounter`` and ``SynOpCounter`` (BatchNorm ignored) in the same pass.
    """
    net = _unwrap(model)
    T = int(T if T is not None else getattr(net, "T", 1))
    names = {m: n for n, m in net.named_modules() if n}
    counter = PaperOpCounter(names, config)
    counters: list = [counter]
    bn_types = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]
    if crosscheck:
        sj_mac, sj_syn = MACCounter(extra_ignore_modules=bn_types), SynOpCounter(extra_ignore_modules=bn_types)
        counters += [sj_mac, sj_syn]
    was_training = net.training
    net.eval()
    n_images = 0
    try:
        with FiringRateMonitor(net) as mon:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(_device(net))
                with DispatchCounterMode(counters):
                    net(x)
                reset_net(net)
                n_images += int(x.shape[0])
            rates = mon.rates()
    finally:
        net.train(was_training)
    if n_images == 0:
        raise ValueError("measure_energy got no batches: pass at least one input batch")
    layers = list(counter.layers.values())
    report = EnergyReport(
        model=model_name or type(net).__name__,
        T=T,
        batch_size=n_images,
        input=input_desc,
        config=config,
        layers=layers,
        firing_rates=rates,
        groups={layer.name: table9_group(layer.name) for layer in layers},
    )
    if crosscheck:
        mac, syn = sj_mac.get_total() / n_images, sj_syn.get_total() / n_images
        report.sj_crosscheck = {
            "mac": mac,
            "synop": syn,
            "synop_ratio": syn / report.sops if report.sops else float("nan"),
            "energy_compute_mj": (config.e_mac_pj * mac + config.e_ac_pj * syn) * 1e-9,
        }
    return report


def firing_rate_rows(rates: Dict[str, float]) -> List[dict]:
    """Rows ``{layer, group, stage, part, firing_rate}`` for the CSV / bar plot."""
    rows = []
    for name, r in rates.items():
        g = table9_group(name)
        stage, _, part = g.partition(" ")
        rows.append({"layer": name, "group": g, "stage": stage if part else "", "part": part or g, "firing_rate": r})
    return rows


def write_firing_rates(rates: Dict[str, float], csv_path: str, png_path: Optional[str] = None, title: str = "") -> None:
    """Write per-layer firing rates (with Table 9 group) to CSV and, optionally, a bar plot."""
    rows = firing_rate_rows(rates)
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["layer", "group", "stage", "part", "firing_rate"])
        w.writeheader()
        w.writerows(rows)
    if png_path:
        plt = pyplot()

        colors = {"embed": "tab:blue", "mixer": "tab:orange", "mlp": "tab:green", "classifier": "tab:red"}
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(rows) + 2), 3.2), dpi=90)
        ax.bar(range(len(rows)), [r["firing_rate"] for r in rows], color=[colors.get(r["part"], "gray") for r in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["layer"] for r in rows], rotation=90, fontsize=5)
        ax.set_ylabel("firing rate")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
        ax.legend(handles, list(colors), fontsize=7, ncol=4)
        ax.set_title(title or "firing rate per spiking layer", fontsize=9)
        fig.tight_layout()
        fig.savefig(png_path)
        plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def synthetic_batches(shape: Sequence[int], n: int, seed: int = 0, kind: str = "images"):
    """``n`` batches of a fixed-seed synthetic input: ``images`` (ImageNet-normalised smooth noise
    with natural-image-like 1/f spectrum) or ``randn``."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        if kind == "randn":
            yield torch.randn(*shape, generator=g)
            continue
        x = torch.randn(*shape, generator=g)
        H, W = shape[-2], shape[-1]
        fy = torch.fft.fftfreq(H)[:, None]
        fx = torch.fft.fftfreq(W)[None, :]
        f = torch.sqrt(fy**2 + fx**2).clamp_min(1.0 / max(H, W))
        x = torch.fft.ifft2(torch.fft.fft2(x) / f).real  # 1/f amplitude, like natural images
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
        yield x


def validation_batches(config_path: str, batch_size: int, img_size: Optional[int] = None):
    """Evaluation-set loader of a training YAML config (``utils.config`` / ``utils.data``) and a description;
    ``img_size`` overrides the config's ``img_size``."""
    cfg = parse_config(["-c", config_path] + (["--img-size", str(img_size)] if img_size else []))
    _, eval_set = create_datasets(cfg, include_train=False)
    loader = DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=0)
    return loader, f"{config_path} evaluation set"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m utils.analysis.energy``."""
    p = Parser(prog="python -m utils.analysis.energy", description="Firing rates, SOPs and energy (paper App. B) of a "
               "registered model on synthetic or real input.")
    p.add_argument("--model", required=True, help="registered model name, e.g. maxformer_10_768")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="constructor kwargs, e.g. embed_dims=64 neuron=if (the grammar of train.py's flag)")
    p.add_argument("--checkpoint", default=None, help="weights to load (ours or the authors')")
    p.add_argument("-c", "--config", default=None, type=readable_file,
                   help="YAML config: measure on its validation data instead of synthetic input")
    p.add_alias("--data", of="--config")
    p.add_argument("-T", "--T", type=positive_int, default=None, help="time steps (default: the model's)")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="synthetic input resolution (default: the model's registered input size)")
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("-b", "--batch-size", type=positive_int, default=2)
    p.add_argument("--batches", type=positive_int, default=1, help="number of batches to average over")
    p.add_argument("--input", choices=("images", "randn"), default=None,
                   help="synthetic input kind (default: images; not with --config, whose data is real)")
    p.add_argument("--e-mac", type=non_negative_float, default=4.6, help="pJ per MAC")
    p.add_argument("--e-ac", type=non_negative_float, default=0.9, help="pJ per AC")
    p.add_bool("--integer-inputs-as-ac", help="count integer-valued inputs (pre-spike sums, event counts) as ACs")
    p.add_argument("--calibrate-bn", type=non_negative_int, default=None,
                   help="train-mode passes to calibrate BatchNorm statistics on the input first "
                        "(default: 2 without --checkpoint, 0 with one)")
    p.add_bool("--crosscheck", help="also run spikingjelly's MACCounter/SynOpCounter")
    p.add_argument("-o", "--output", default="output/energy", type=writable_folder, help="folder for JSON / CSV / PNG")
    p.add_alias("--out", of="--output")
    p.add_bool("--quiet", help="print only the summary, not every layer")
    p.add_bool("--overwrite", help="replace output files this command did not write (it replaces its own anyway)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    torch.manual_seed(0)
    try:
        kwargs = parse_model_kwargs(args.model_kwargs)
        kwargs.update({k: v for k, v in (("T", args.T), ("num_classes", args.num_classes)) if v is not None})
        if args.config and args.input:
            raise ModelError(f"--input {args.input} chooses the synthetic input; with --config the input is the "
                             "config's evaluation data: leave out one of them")
        args.input = args.input or "images"
        model = load_model(args.model, args.checkpoint, **kwargs)
        if args.config:
            batches, desc = validation_batches(args.config, args.batch_size, args.img_size)
        else:
            shape = input_spec(model).shape(args.batch_size, args.img_size)
            batches = synthetic_batches(shape, args.batches, kind=args.input)
            desc = f"synthetic {args.input} {list(shape)} x{args.batches}"
    except INPUT_ERRORS + (ModelError,) as err:
        p.error(str(err))
    T = int(getattr(model, "T", 1))
    desc += ", checkpoint " + args.checkpoint if args.checkpoint else ", random init"
    n_cal = args.calibrate_bn if args.calibrate_bn is not None else (0 if args.checkpoint else 2)
    if n_cal:
        cal = itertools.islice(iter(batches), n_cal) if args.config else synthetic_batches(shape, n_cal, seed=1,
                                                                                         kind=args.input)
        calibrate_bn(model, cal)
        desc += f", BN calibrated on {n_cal} {'data' if args.config else 'synthetic'} batches"

    try:  # before the measurement
        check_outputs(report_paths(args.output, f"{args.model}_T{T}"), args.overwrite, inputs=(args.checkpoint,))
    except INPUT_ERRORS as err:
        p.error(str(err))
    config = EnergyConfig(args.e_mac, args.e_ac, args.integer_inputs_as_ac)
    report = measure_energy(model, batches, T=T, config=config, crosscheck=args.crosscheck, input_desc=desc,
                            model_name=args.model, max_batches=args.batches)
    print(report.format_table(per_layer=not args.quiet))
    settings = {k: v for k, v in kwargs.items() if k != "T"}  # T is in the name already
    stem = "_".join([args.model, f"T{T}"] + ([settings_tag(settings)] if settings else [])
                    + ([f"{args.img_size}px"] if args.img_size else []))
    write_report(report, args.output, stem, title=f"{args.model} T={T}: {desc}", overwrite=args.overwrite)
    return 0


def settings_tag(kwargs: dict) -> str:
    """A short, stable file-name tag for model kwargs: ``embed_dims32-neuronif``, or a hash when that is long."""
    text = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    text = re.sub(r"[^\w.+-]+", "", text)
    if len(text) <= 40:
        return text

    return "kw" + hashlib.sha1(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:10]


def report_paths(out_dir: str, stem: str) -> Dict[str, str]:
    """The files :func:`write_report` writes, by what they hold."""
    stem = os.path.join(out_dir, stem)
    return {what: stem + suffix for what, suffix in (("energy JSON", "_energy.json"), ("energy CSV", "_energy.csv"),
                                                     ("firing-rate CSV", "_firing_rates.csv"),
                                                     ("firing-rate figure", "_firing_rates.png"))}


def write_report(report: EnergyReport, out_dir: str, stem: str, title: str = "", overwrite: bool = False) -> str:
    """Write ``<stem>_energy.json``, ``_energy.csv``, ``_firing_rates.csv`` and ``_firing_rates.png`` in ``out_dir``
    (files there that an earlier report did not write are refused unless ``overwrite``, :mod:`utils.io.outputs`)."""
    paths = report_paths(out_dir, stem)
    check_outputs(paths, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, stem)
    with open(stem + "_energy.json", "w") as f:
        json.dump(report.as_dict(), f, indent=1)
    report.write_csv(stem + "_energy.csv")
    write_firing_rates(report.firing_rates, stem + "_firing_rates.csv", stem + "_firing_rates.png", title=title)
    record_outputs(*paths.values())
    print(f"wrote {stem}_energy.json, _energy.csv, _firing_rates.csv, _firing_rates.png")
    return stem


if __name__ == "__main__":
    sys.exit(run_main(main))
