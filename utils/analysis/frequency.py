"""Frequency analysis of spiking neurons and networks (paper §2, Fig. 2, 3, 6, 8).

``python -m utils.analysis.frequency <subcommand>``; every subcommand writes a PNG and a CSV.

* ``transfer`` — measured response of the library's LIF (beta = 1 - 1/tau) and IF neurons to
  sinusoids against ``|H(e^jw)| = |(1-beta)/(1-beta e^-jw)|`` and ``1/|1-e^-jw|``, for one layer
  and a cascade of L layers. Two measurements: the membrane potential with spiking switched off
  (threshold at infinity: exactly the linear system of Eq. 6-8 and 12-13), and the population
  spike rate of spiking neurons, normalised by its lowest-frequency gain (the linearised gain k
  of Eq. 9-10).
* ``toy`` — the Fig. 3 toy: ``x(t) = (sin 2pi100t + sin 2pi200t + sin 2pi300t)/3`` through ReLU
  and an LIF neuron (beta = 0.25), time plots and spectra before and after a linear layer.
* ``spectra`` — relative log amplitude of the channel-averaged 2-D Fourier transform of each
  block's output and a high-frequency energy ratio per block, for several models/configs in one
  plot (LIF vs IF, Max- vs Avg-Pool mixing, Embed-Max vs Embed-Orig are one command each).
* ``gradcam`` — Grad-CAM maps (:mod:`utils.analysis.gradcam`) of the last stage for given images, saved as overlays.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from models import ModelError, input_spec, parse_model_kwargs
from models.neurons import NeuronConfig, reset_net
from utils.analysis.energy import calibrate_bn, settings_tag
from utils.analysis.gradcam import grad_cam, last_block
from utils.config.cli import Parser, non_negative_int, number_type, positive_float, positive_int, writable_folder
from utils.errors import INPUT_ERRORS
from utils.io.figures import pyplot
from utils.io.outputs import check_outputs, record_outputs
from utils.training.checkpoint import load_model

__all__ = [
    "lif_transfer", "if_transfer", "measure_membrane_gain", "measure_spiking_gain",
    "radial_log_amplitude", "high_frequency_ratio", "feature_spectra", "grad_cam", "parse_model_spec",
]

HF_CUTOFF = 0.5  # normalised radius (1 = the corner frequency (pi, pi)) above which energy is "high"


# ============================================================================ (a) transfer functions
def lif_transfer(omega: np.ndarray, beta: float, layers: int = 1) -> np.ndarray:
    """``|(1-beta)/(1-beta e^{-jw})|^L`` (Eq. 8 / 12 without the k W(z) factors)."""
    return np.abs((1 - beta) / (1 - beta * np.exp(-1j * omega))) ** layers


def if_transfer(omega: np.ndarray, layers: int = 1) -> np.ndarray:
    """``|1/(1-e^{-jw})|^L`` (Eq. 13)."""
    return np.abs(1 / (1 - np.exp(-1j * omega))) ** layers


def _fit_amplitude(y: np.ndarray, omega: float, n: np.ndarray, poly: int) -> float:
    """Amplitude of the ``omega`` sinusoid in ``y[n]`` by least squares (with polynomial nuisance terms)."""
    cols = [np.cos(omega * n), np.sin(omega * n)] + [(n / n.max()) ** p for p in range(poly + 1)]
    A = np.stack(cols, 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return float(np.hypot(coef[0], coef[1]))


def _neuron(kind: str, tau: float, v_threshold: float, v_reset: Optional[float] = 0.0) -> nn.Module:
    if kind not in ("lif", "if"):  # the transfer functions compared with are LIF's and IF's
        raise ValueError(f"this analysis supports LIF/IF (neuron 'lif' or 'if'), got {kind!r}")
    return NeuronConfig(kind=kind, tau=tau, v_threshold=v_threshold, v_reset=v_reset).make()


@torch.no_grad()
def measure_membrane_gain(omegas: Sequence[float], kind: str = "lif", tau: float = 2.0, layers: int = 1,
                          steps: int = 1024) -> np.ndarray:
    """Gain ``|V|/|I|`` of the membrane after ``layers`` cascaded neurons, spiking disabled.

    Each neuron is the library's multi-step neuron with threshold ``inf``; layer ``i+1`` is driven
    by the membrane potential of layer ``i``. Returns one gain per frequency (rad/sample).
    """
    n = torch.arange(steps, dtype=torch.float64)
    om = torch.tensor(list(omegas), dtype=torch.float64)
    x = torch.cos(om[None, :] * n[:, None]).float()  # [T, F]
    for _ in range(layers):
        node = _neuron(kind, tau, float("inf"))
        node.store_v_seq = True
        node(x)
        x = node.v_seq.clone()
        node.reset()
    y = x.double().numpy()
    keep = np.arange(steps // 2, steps) if kind == "lif" else np.arange(steps)
    nn_ = n.numpy()[keep]
    poly = 0 if kind == "lif" else layers  # IF integrates the start-up offset into polynomials
    return np.array([_fit_amplitude(y[keep, i], float(w), nn_, poly) for i, w in enumerate(om.tolist())])


@torch.no_grad()
def measure_spiking_gain(omegas: Sequence[float], kind: str = "lif", tau: float = 2.0, layers: int = 1,
                         steps: int = 2048, population: int = 512, amplitude: float = 0.1,
                         seed: int = 0, v_reset: Optional[float] = 0.0) -> np.ndarray:
    """Relative gain of the population spike rate of ``layers`` cascaded spiking layers.

    Each layer has ``population`` neurons (threshold 1; hard reset to 0 as in the published
    models, ``v_reset=None`` for the soft reset), driven by ``bias_j + amplitude * cos(w n)`` (layer 1)
    or by ``bias_j + g * rate[n]`` (the population-mean spikes of the layer before, a uniform linear
    layer). Biases are spread so rates spread over (0, 1) (LIF with input decay needs ``I > V_th`` to
    fire). The amplitude of the ``w`` component of the output population rate is divided by its value
    at the lowest frequency, i.e. the linearised gain ``k`` of Eq. 9-10 is factored out. Compare with
    ``|H(e^jw)|^L / |H(e^jw_min)|^L``.
    """
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(steps, dtype=torch.float64)
    om = torch.tensor(list(omegas), dtype=torch.float64)
    drive = (amplitude * torch.cos(om[None, :] * n[:, None])).float()  # [T, F]
    signal = drive
    for layer in range(layers):
        lo, hi = (0.1, 0.9) if kind == "if" else (1.1, 4.0)  # LIF (decay_input) fires only for I > V_th
        bias = lo + (hi - lo) * torch.rand(1, 1, population, generator=g)  # [1, 1, P]
        if layer > 0:  # a uniform linear layer reading the previous population rate (centred)
            signal = signal - signal.mean(0, keepdim=True)
        inp = bias + signal[:, :, None]
        node = _neuron(kind, tau, 1.0, v_reset)
        node.v = torch.rand(1, om.numel(), population, generator=g)  # random initial phase
        s = node(inp)
        node.reset()
        signal = s.mean(2)  # [T, F]
    y = signal.double().numpy()
    keep = np.arange(steps // 4, steps)
    amps = np.array([_fit_amplitude(y[keep, i], float(w), n.numpy()[keep], 0) for i, w in enumerate(om.tolist())])
    return amps / amps[0]


def transfer_command(args) -> None:
    plt = pyplot()
    beta = 1 - 1 / args.tau
    omegas = np.linspace(args.w_min, 0.98, args.points) * np.pi
    rows = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, L in enumerate(sorted(set([1, args.layers]))):
        lif_m = measure_membrane_gain(omegas, "lif", args.tau, L)
        if_m = measure_membrane_gain(omegas, "if", args.tau, L)
        lif_t, if_t = lif_transfer(omegas, beta, L), if_transfer(omegas, L)
        lif_s = measure_spiking_gain(omegas, "lif", args.tau, L)
        if_s = measure_spiking_gain(omegas, "if", args.tau, L)
        for i, w in enumerate(omegas):
            rows.append(dict(layers=L, omega_over_pi=w / np.pi, lif_theory=lif_t[i], lif_membrane=lif_m[i],
                             lif_spiking_rel=lif_s[i], lif_theory_rel=lif_t[i] / lif_t[0], if_theory=if_t[i],
                             if_membrane=if_m[i], if_spiking_rel=if_s[i], if_theory_rel=if_t[i] / if_t[0]))
        c = colors[ci % len(colors)]
        x = omegas / np.pi
        axes[0].semilogy(x, lif_t, "-", color=c, label=f"LIF |H|^{L} (beta={beta:.2f})")
        axes[0].semilogy(x, lif_m, "o", color=c, ms=3, label=f"LIF membrane, L={L}")
        axes[0].semilogy(x, if_t, "--", color=c, label=f"IF |1/(1-z^-1)|^{L}")
        axes[0].semilogy(x, if_m, "x", color=c, ms=4, label=f"IF membrane, L={L}")
        axes[1].semilogy(x, lif_t / lif_t[0], "-", color=c, label=f"LIF theory, L={L}")
        axes[1].semilogy(x, lif_s, "o", color=c, ms=3, label=f"LIF spikes, L={L}")
        axes[1].semilogy(x, if_t / if_t[0], "--", color=c, label=f"IF theory, L={L}")
        axes[1].semilogy(x, if_s, "x", color=c, ms=4, label=f"IF spikes, L={L}")
    axes[0].set_title("membrane gain (spiking off)", fontsize=9)
    axes[1].set_title("population spike-rate gain / gain at lowest w", fontsize=9)
    for ax in axes:
        ax.set_xlabel("normalised frequency w / pi")
        ax.legend(fontsize=5.5, ncol=2)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("|H(e^jw)|")
    fig.tight_layout()
    _save(fig, rows, args.output, "transfer")


# ============================================================================ (b) Fig. 3 toy
@torch.no_grad()
def toy_signals(fs: float = 2000.0, duration: float = 0.1, beta: float = 0.25, channels: int = 256,
                v_threshold: float = 0.5, seed: int = 0) -> Dict[str, np.ndarray]:
    """Fig. 3 toy. ``x`` feeds ``channels`` units with random gains/biases (a layer), activation
    ReLU or LIF (beta), then a random linear read-out ``w`` across units."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(fs * duration), dtype=torch.float64) / fs
    x = (torch.sin(2 * math.pi * 100 * t) + torch.sin(2 * math.pi * 200 * t) + torch.sin(2 * math.pi * 300 * t)) / 3
    gain = 0.5 + torch.rand(channels, generator=g, dtype=torch.float64)
    bias = 0.2 * torch.randn(channels, generator=g, dtype=torch.float64)
    pre = (x[:, None] * gain + bias).float()  # [T, channels]
    relu = F.relu(pre)
    tau = 1 / (1 - beta)
    node = _neuron("lif", tau, v_threshold)
    spikes = node(pre.unsqueeze(1)).squeeze(1)
    w = torch.randn(channels, generator=g) / math.sqrt(channels)
    return dict(t=t.numpy(), x=x.numpy(), relu=relu[:, 0].numpy(), spikes=spikes[:, 0].numpy(),
                relu_linear=(relu @ w).numpy(), spikes_linear=(spikes @ w).numpy(), fs=np.array(fs))


def _spectrum(y: np.ndarray, fs: float) -> Tuple[np.ndarray, np.ndarray]:
    y = y - y.mean()
    amp = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / len(y)
    return np.fft.rfftfreq(len(y), 1 / fs), amp


def band_fraction(y: np.ndarray, fs: float, above_hz: float) -> float:
    """Share of (non-DC) spectral energy of ``y`` above ``above_hz``."""
    f, a = _spectrum(y, fs)
    p = a[1:] ** 2
    return float(p[f[1:] > above_hz].sum() / p.sum())


def toy_command(args) -> None:
    plt = pyplot()
    s = toy_signals(fs=args.fs, beta=args.beta, v_threshold=args.v_threshold)
    fs = float(s["fs"])
    fig, axes = plt.subplots(2, 3, figsize=(11, 5), dpi=80)
    t = s["t"] * 1000
    axes[0, 0].plot(t, s["x"], lw=1, label="x(t)")
    axes[0, 0].plot(t, s["relu"], lw=1, label="ReLU")
    axes[0, 0].set_title("input and ReLU (one unit)", fontsize=9)
    axes[0, 1].plot(t, s["x"], lw=1, color="gray", label="x(t)")
    axes[0, 1].vlines(t[s["spikes"] > 0], 0, 1, color="tab:red", lw=1, label="LIF spikes")
    axes[0, 1].set_title(f"LIF (beta={args.beta}) spikes (one unit)", fontsize=9)
    axes[0, 2].plot(t, s["relu_linear"], lw=1, label="ReLU -> linear")
    axes[0, 2].plot(t, s["spikes_linear"], lw=1, label="LIF -> linear")
    axes[0, 2].set_title("after a linear layer", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("t (ms)")
        ax.legend(fontsize=6)
    rows = []
    for ax, keys, title in ((axes[1, 0], ("x", "relu"), "|X(f)|, |R(f)|"),
                            (axes[1, 1], ("x", "spikes"), "|S(f)| (raw spikes)"),
                            (axes[1, 2], ("relu_linear", "spikes_linear"), "after a linear layer")):
        for k in keys:
            f, a = _spectrum(s[k], fs)
            ax.plot(f, a / a.max(), lw=1, label=k)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("f (Hz)")
        ax.legend(fontsize=6)
    for k in ("x", "relu", "spikes", "relu_linear", "spikes_linear"):
        f, a = _spectrum(s[k], fs)
        pk = {hz: float(a[np.argmin(np.abs(f - hz))]) for hz in (100, 200, 300)}
        rows.append(dict(signal=k, amp_100hz=pk[100], amp_200hz=pk[200], amp_300hz=pk[300],
                         ratio_300_to_100=pk[300] / max(pk[100], 1e-12),
                         energy_above_350hz=band_fraction(s[k], fs, 350.0)))
    fig.tight_layout()
    _save(fig, rows, args.output, "toy")


# ============================================================================ (c) feature spectra
def _radius(H: int, W: int) -> torch.Tensor:
    """Normalised frequency radius of each FFT bin: 0 at DC, 1 at (pi, pi)."""
    fy = torch.fft.fftfreq(H) * 2
    fx = torch.fft.fftfreq(W) * 2
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / math.sqrt(2)


def _as_maps(x: torch.Tensor) -> torch.Tensor:
    """``[T,B,C,H,W]`` (mean over T) / ``[B,C,H,W]`` / ``[T,B,C,N]`` tokens -> ``[B,C,H,W]``."""
    x = x.detach().float()
    if x.dim() == 5:
        return x.mean(0)
    if x.dim() == 4 and x.shape[-1] != x.shape[-2]:
        n = int(round(math.sqrt(x.shape[-1])))
        if n * n == x.shape[-1]:
            return x.mean(0).reshape(*x.shape[1:3], n, n)
    if x.dim() == 4:
        return x
    raise ValueError(f"cannot read a 2-D feature map from a tensor of shape {list(x.shape)}")


def radial_log_amplitude(x: torch.Tensor, bins: int = 16) -> Tuple[np.ndarray, np.ndarray]:
    """Relative log amplitude of the channel-averaged 2-D FFT vs normalised frequency.

    ``log|F|`` averaged over batch and channels, averaged over rings of radius r in [0, 1]
    (1 = (pi, pi)), minus its value at zero frequency (Park & Kim 2022 convention).
    Returns ``(radius centres, relative log amplitude)``; the first entry is 0 at r = 0.
    """
    maps = _as_maps(x)
    amp = torch.fft.fft2(maps).abs()
    logamp = torch.log(amp + 1e-6).mean((0, 1))
    r = _radius(*maps.shape[-2:])
    edges = torch.linspace(0, 1, bins + 1)
    centres, vals = [0.0], [0.0]
    dc = logamp[0, 0]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (r > lo) & (r <= hi)
        if m.any():
            centres.append(float((lo + hi) / 2))
            vals.append(float(logamp[m].mean() - dc))
    return np.array(centres), np.array(vals)


def high_frequency_ratio(x: torch.Tensor, cutoff: float = HF_CUTOFF) -> float:
    """Share of non-DC spectral energy (summed over batch and channels) above normalised radius ``cutoff``."""
    maps = _as_maps(x)
    p = torch.fft.fft2(maps).abs().pow(2).sum((0, 1))
    r = _radius(*maps.shape[-2:])
    total = p[r > 0].sum()
    return float(p[r > cutoff].sum() / total) if total > 0 else 0.0


DEFAULT_BLOCKS = r"^(patch_embed\d*|stage\d+\.\d+|layer\d+\.\d+|block\.\d+|conv1)$"


def parse_model_spec(spec: str) -> Tuple[str, str, dict]:
    """``[label=]name[:key=value;key=value]`` -> ``(label, name, kwargs)``.

    The items are ``--model-kwargs`` items separated by ``;`` and read by :func:`models.parse_model_kwargs`
    (a bad item raises :class:`~models.ModelError`). Example:
    ``avg=maxformer_cifar:mixers=[avg,avg,avg];embeds=[orig,orig,orig]``.
    """
    label = None
    m = re.match(r"^([\w\-+ .]+)=(?=[\w]+(:|$))", spec)
    if m and ":" not in m.group(1):
        label, spec = m.group(1), spec[m.end():]
    name, _, rest = spec.partition(":")
    kwargs = parse_model_kwargs(filter(None, rest.split(";")))
    return label or (name + (":" + rest if rest else "")), name, kwargs


@torch.no_grad()
def feature_spectra(model: nn.Module, images: torch.Tensor, block_pattern: str = DEFAULT_BLOCKS,
                    bins: int = 16) -> List[dict]:
    """Per-block relative log amplitude and high-frequency ratio of ``model``'s outputs on ``images``."""
    pat = re.compile(block_pattern)
    outs: Dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if name and pat.match(name):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o)))
    if not handles:
        raise LookupError(f"no module name matches {block_pattern!r}; pass --blocks REGEX")
    model.eval()
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
        reset_net(model)
    rows = []
    for depth, (name, o) in enumerate(outs.items()):
        o = o[0] if isinstance(o, (tuple, list)) else o
        try:
            r, v = radial_log_amplitude(o, bins)
        except ValueError:
            continue
        rows.append(dict(depth=depth, block=name, hf_ratio=high_frequency_ratio(o), radius=r, rel_log_amp=v,
                         rel_log_amp_at_pi=float(v[-1]), shape=list(o.shape)))
    return rows


def load_images(paths: Sequence[str], size: int, normalize: Optional[Tuple] = None) -> torch.Tensor:
    """Images from ``paths`` (or scikit-learn's two bundled photos if empty) as a ``[B,3,size,size]`` batch."""
    arrays = []
    if paths:
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"image {p!r} does not exist")
            arrays.append(np.asarray(Image.open(p).convert("RGB")))
    else:
        from sklearn.datasets import load_sample_image  # lazy: scikit-learn 0.7 s, only this source needs it

        arrays = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    out = []
    for a in arrays:
        im = Image.fromarray(a)
        s = min(im.size)
        im = im.crop(((im.size[0] - s) // 2, (im.size[1] - s) // 2, (im.size[0] + s) // 2, (im.size[1] + s) // 2))
        out.append(torch.from_numpy(np.array(im.resize((size, size), Image.BICUBIC))).permute(2, 0, 1).float() / 255)
    x = torch.stack(out)
    if normalize:
        mean, std = normalize
        x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x


def _build(name: str, kwargs: dict, checkpoint: Optional[str]) -> nn.Module:
    """The model (seed 0, optional weights), checked to take 3-channel images (the photos this module reads)."""
    torch.manual_seed(0)
    model = load_model(name, checkpoint, **kwargs)
    spec = input_spec(model)
    if spec.frames is not None or spec.channels != 3:
        kind = "event frames" if spec.frames is not None else "images"
        raise ModelError(f"model '{name}' takes {spec.channels}-channel {kind}, not RGB images; "
                         "spectra and Grad-CAM need an RGB image model (e.g. maxformer_cifar)")
    return model


def _norm_of(model: nn.Module) -> Optional[Tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (cfg["mean"], cfg["std"]) if "mean" in cfg and len(cfg["mean"]) == 3 else None


def spectra_command(args) -> None:
    plt = pyplot()
    specs = [parse_model_spec(s) for s in args.model]
    ckpts = dict(c.split("=", 1) if "=" in c else (specs[0][0], c) for c in (args.weights or []))
    unknown = sorted(set(ckpts) - {label for label, _, _ in specs})
    if unknown:
        raise ModelError(f"--weights {unknown[0]}=...: no --model has the label {unknown[0]!r}; labels: "
                         f"{', '.join(label for label, _, _ in specs)} (give one as --model LABEL=NAME)")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    rows = []
    for label, name, kwargs in specs:
        model = _build(name, kwargs, ckpts.get(label))
        x = load_images(args.images, args.img_size, _norm_of(model))
        if ckpts.get(label) is None:
            calibrate_bn(model, [x])
        res = feature_spectra(model, x, args.blocks, args.bins)
        for r in res:
            rows.append(dict(model=label, depth=r["depth"], block=r["block"], hf_ratio=r["hf_ratio"],
                             rel_log_amp_at_pi=r["rel_log_amp_at_pi"], shape="x".join(map(str, r["shape"])),
                             rel_log_amp=" ".join(f"{v:.4f}" for v in r["rel_log_amp"])))
        d = [r["depth"] for r in res]
        axes[0].plot(d, [r["rel_log_amp_at_pi"] for r in res], "o-", ms=3, label=label)
        axes[1].plot(d, [r["hf_ratio"] for r in res], "o-", ms=3, label=label)
        last = res[-1]
        axes[2].plot(last["radius"], last["rel_log_amp"], "-", label=f"{label}: {last['block']}")
        print(f"{label:40s} HF ratio per block: " + " ".join(f"{r['hf_ratio']:.3f}" for r in res))
    axes[0].set_title("rel. log amplitude at the highest frequency", fontsize=9)
    axes[1].set_title(f"HF energy ratio (radius > {HF_CUTOFF})", fontsize=9)
    axes[2].set_title("rel. log amplitude, last block", fontsize=9)
    axes[0].set_xlabel("block depth")
    axes[1].set_xlabel("block depth")
    axes[2].set_xlabel("normalised frequency (1 = pi)")
    for ax in axes:
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    src = "given images" if args.images else "scikit-learn sample photos"
    state = "checkpoints" if ckpts else "random init, BN calibrated on the batch"
    fig.suptitle(f"feature spectra ({src}, {args.img_size}px, {state})", fontsize=9)
    fig.tight_layout()
    _save(fig, rows, args.output, args.name)


# ============================================================================ (d) Grad-CAM
def gradcam_command(args) -> None:
    plt = pyplot()
    label, name, kwargs = parse_model_spec(args.model)
    model = _build(name, kwargs, args.checkpoint)
    raw = load_images(args.images, args.img_size or input_spec(model).img_size)
    norm = _norm_of(model)
    x = raw if norm is None else (raw - torch.tensor(norm[0])[:, None, None]) / torch.tensor(norm[1])[:, None, None]
    if args.checkpoint is None:
        calibrate_bn(model, [x])
    layer = args.layer or last_block(model, DEFAULT_BLOCKS)
    cam = grad_cam(model, x, layer, args.target)
    fig, axes = plt.subplots(1, len(x), figsize=(3 * len(x), 3.2), dpi=80, squeeze=False)
    rows = []
    for i, ax in enumerate(axes[0]):
        ax.imshow(raw[i].permute(1, 2, 0).numpy())
        ax.imshow(cam[i].numpy(), cmap="jet", alpha=0.45)
        ax.axis("off")
        src = args.images[i] if args.images else ["china.jpg", "flower.jpg"][i]
        ax.set_title(os.path.basename(src), fontsize=8)
        rows.append(dict(image=src, layer=layer, cam_mean=float(cam[i].mean())))
    state = f"checkpoint {os.path.basename(args.checkpoint)}" if args.checkpoint else "random init (no checkpoint)"
    fig.suptitle(f"Grad-CAM {label} @ {layer} ({state})", fontsize=9)
    fig.tight_layout()

    _save(fig, rows, args.output, "gradcam_" + name + (f"_{settings_tag(kwargs)}" if kwargs else ""))


# ============================================================================ CLI
def _save(fig, rows: List[dict], out: str, stem: str) -> None:
    os.makedirs(out, exist_ok=True)
    png, csv_path = os.path.join(out, stem + ".png"), os.path.join(out, stem + ".csv")
    fig.savefig(png)
    pyplot().close(fig)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    record_outputs(png, csv_path)
    print(f"wrote {png} and {csv_path}")


def _regex(text: str) -> str:
    """``--blocks``: a Python regular expression (checked here, so a typo is named before any model is built)."""
    try:
        re.compile(text)
    except re.error as err:
        where = f" at position {err.pos}: {text[:err.pos]!r} then {text[err.pos:]!r}" if err.pos is not None else ""
        raise argparse.ArgumentTypeError(f"not a regular expression ({err.msg}{where}); escape literal "
                                         f"brackets and dots as \\( \\[ \\.") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """``python -m utils.analysis.frequency {transfer,toy,spectra,gradcam}``."""
    tau_type = number_type(float, 1.0, strict=True, what="a time constant > 1 (beta = 1 - 1/tau)")

    p = Parser(prog="python -m utils.analysis.frequency", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("transfer", help="LIF / IF gain vs frequency against |H(e^jw)|")
    a.add_argument("--tau", type=tau_type, default=2.0, help="LIF time constant (beta = 1 - 1/tau)")
    a.add_argument("--layers", type=positive_int, default=3, help="cascade depth L (1 is always plotted too)")
    a.add_argument("--points", type=positive_int, default=24, help="frequencies measured")
    w_min_type = number_type(float, 0.0, strict=True, below=0.98, what="a number in (0, 0.98)")
    a.add_argument("--w-min", type=w_min_type, default=0.04, help="lowest frequency / pi")
    a.set_defaults(func=transfer_command)

    b = sub.add_parser("toy", help="Fig. 3 toy: three sinusoids through ReLU and LIF")
    b.add_argument("--beta", type=number_type(float, 0.0, below=1.0, what="a decay in [0, 1)"), default=0.25,
                   help="LIF decay per step")
    b.add_argument("--fs", type=positive_float, default=2000.0, help="sampling rate (Hz): one step = 1/fs")
    b.add_argument("--v-threshold", type=positive_float, default=0.5)
    b.set_defaults(func=toy_command)

    c = sub.add_parser("spectra", help="feature-map spectra per block for several models")
    c.add_argument("--model", action="append", required=True,
                   help="[label=]name[:key=value;...], repeat for each curve, e.g. "
                        "if=maxformer_cifar:neuron=if (values as in --model-kwargs)")
    c.add_argument("--weights", action="append", metavar="LABEL=PATH",
                   help="LABEL=PATH (or PATH for the first model); repeatable")
    c.add_alias("--checkpoint", of="--weights", action="append")
    c.add_argument("--images", nargs="*", default=[], help="image files (default: scikit-learn sample photos)")
    c.add_argument("--img-size", type=positive_int, default=64)
    c.add_argument("--blocks", default=DEFAULT_BLOCKS, type=_regex,
                   help="regex of module names whose outputs are analysed")
    c.add_argument("--bins", type=positive_int, default=16, help="frequency rings")
    c.add_argument("--name", default="spectra", help="output file stem")
    c.set_defaults(func=spectra_command)

    d = sub.add_parser("gradcam", help="Grad-CAM overlays of the last stage")
    d.add_argument("--model", required=True, help="[label=]name[:key=value;...]")
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--images", nargs="*", default=[])
    d.add_argument("--img-size", type=positive_int, default=None,
                   help="image size (default: the model's registered input size)")
    d.add_argument("--layer", default=None, help="module name (default: the last block)")
    d.add_argument("--target", type=non_negative_int, default=None, help="class index (default: predicted)")
    d.set_defaults(func=gradcam_command)

    for s in (a, b, c, d):
        s.add_argument("-o", "--output", default="output/frequency", type=writable_folder, help="output folder")
        s.add_alias("--out", of="--output")
        s.add_bool("--overwrite", help="replace output files this command did not write (it replaces its own anyway)")
    return p


def _check_outputs(args) -> None:
    """The subcommand's ``<stem>.png`` / ``.csv`` replace no input and no file it did not write (``--overwrite``)."""
    stem = {"transfer": "transfer", "toy": "toy", "spectra": getattr(args, "name", "")}.get(args.cmd)
    if stem is None:  # gradcam_<model name>
        stem = "gradcam_" + parse_model_spec(args.model)[1]
    inputs = [getattr(args, "checkpoint", None), *(getattr(args, "images", None) or [])]
    inputs += [w.split("=", 1)[-1] for w in getattr(args, "weights", None) or []]
    check_outputs({"figure": os.path.join(args.output, stem + ".png"), "CSV": os.path.join(args.output, stem + ".csv")},
                  args.overwrite, inputs=inputs)


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        _check_outputs(args)
        args.func(args)
    except INPUT_ERRORS + (ModelError, LookupError, OSError) as err:  # bad names, files, kwargs: no traceback
        p.error(str(err))
    return 0


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
