"""Token mixers of the spiking transformers, selectable by name.

``create_mixer(name, dim, num_heads=..., neuron_cfg=...)`` builds one. Names:
``identity``, ``avg``, ``max``, ``dwc<k>`` (any odd k: dwc1, dwc3, dwc5, dwc7, ...), ``ssa``,
``ssa_dwc`` / ``ssa_dwc<k>`` (SSA followed by a spiking DWC, k=5 by default), ``qka``, ``sdsa``.
New mixers register with ``@register_mixer("name")``.

The hub sits below ``models/`` and imports nothing from it: a mixer's neurons come from ``neuron_cfg``, any
object whose ``make(**overrides)`` returns a multi-step neuron (``models.NeuronConfig``). Without one, the
default that ``models`` installs on import (:func:`set_default_neurons`, the published settings) is used.

Every mixer maps a membrane-level tensor ``[T, B, C, H, W]`` to ``[T, B, C, H, W]`` and adds its
own residual where the published code has one (DWC, SSA, QKA, SDSA add the block input; the
pooling mixers replace it; ``identity`` returns it). ``Block`` then applies the spiking MLP.
The class attribute ``block_attr`` is the attribute name a block stores the mixer under
(``attn`` for attention mixers, ``mixer`` otherwise): it fixes the published state_dict keys.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Callable, Dict, Optional, Protocol

import torch
import torch.nn as nn

__all__ = ["register_mixer", "mixer_names", "create_mixer", "is_attention_mixer", "set_default_neurons",
           "IdentityMixer", "PoolMixer", "DWCMixer", "SSA", "SSADWC", "TokenQKAttention", "SDSA"]

_MIXERS: Dict[str, Callable[..., nn.Module]] = {}
_PATTERNS = {"dwc": r"dwc(\d+)", "ssa_dwc": r"ssa_dwc(\d+)"}

ATTN_V_THRESHOLD = 0.5  # threshold of every attention LIF in the published code
# model-wide settings a block hands to every mixer; dropped for mixers that do not take them
_CONTEXT_KWARGS = ("num_heads", "neuron_cfg", "attn_v_threshold")


def register_mixer(name: str):
    """Class/function decorator: make a mixer constructible by ``name``."""

    def wrap(fn):
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} registered twice")
        _MIXERS[name] = fn
        return fn

    return wrap


def mixer_names():
    """Registered mixer names (``dwc<k>`` and ``ssa_dwc<k>`` accept any odd k)."""
    return sorted(_MIXERS)


def _parse(name: str):
    """``(registry key, extra kwargs)`` for ``name``, or ``(None, {})`` if unknown."""
    if name in _MIXERS and name != "dwc":
        return name, {}
    for key, pattern in _PATTERNS.items():
        m = re.fullmatch(pattern, name)
        if m:
            return key, {"kernel_size": int(m.group(1))}
    return None, {}


def create_mixer(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the token mixer called ``name`` for ``dim`` channels.

    ``num_heads``, ``neuron_cfg`` and ``attn_v_threshold`` are passed only to mixers that take
    them; any other unknown kwarg is an error.
    """
    key, extra = _parse(str(name))
    if key is None:
        plain = [n for n in mixer_names() if n not in _PATTERNS]
        close = difflib.get_close_matches(str(name), plain + ["dwc3", "dwc5", "dwc7", "ssa_dwc5"], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown token mixer {name!r}.{hint} Known: {', '.join(plain)}, "
                         f"dwc<odd k>, ssa_dwc<odd k>")
    fn = _MIXERS[key]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k not in _CONTEXT_KWARGS or k in params}
    return fn(dim, **extra, **kwargs)


def is_attention_mixer(name: str) -> bool:
    """True if ``name`` splits channels into heads (``num_heads`` must divide the width)."""
    key, _ = _parse(str(name))
    return key is not None and getattr(_MIXERS[key], "uses_heads", False)


class NeuronSettings(Protocol):
    """What a mixer needs of its neuron settings (``models.NeuronConfig`` is one)."""

    def make(self, **overrides) -> nn.Module: ...


_default_neurons: Optional[Callable[[], NeuronSettings]] = None


def set_default_neurons(factory: Callable[[], NeuronSettings]) -> None:
    """The neuron settings of a mixer built without ``neuron_cfg``: ``factory()`` (``models`` installs
    ``models.NeuronConfig``, the published settings, when it is imported)."""
    global _default_neurons
    _default_neurons = factory


def _neurons(cfg: Optional[NeuronSettings]) -> NeuronSettings:
    """``cfg`` or the default neuron settings."""
    if cfg is not None:
        return cfg
    if _default_neurons is None:
        raise TypeError("this mixer has spiking neurons: pass neuron_cfg= (e.g. models.NeuronConfig()), or import "
                        "models first, which installs the published neuron settings as the default")
    return _default_neurons()


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T*B, ...]``: time folded into the batch, as convolutions and BatchNorm see it."""
    return x.flatten(0, 1)


def unfold_time(y: torch.Tensor, T: int) -> torch.Tensor:
    """Inverse of :func:`fold_time`: ``[T*B, ...] -> [T, B, ...]``."""
    return y.reshape(T, -1, *y.shape[1:])


def _check_heads(cls_name: str, dim: int, num_heads: int):
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"{cls_name}: width {dim} is not divisible by num_heads={num_heads}; "
                         f"choose num_heads among the divisors of {dim}")


def _check_odd(kernel_size: int, what: str):
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{what} needs an odd kernel size (1, 3, 5, 7, ...), got {kernel_size}")


@register_mixer("identity")
class IdentityMixer(nn.Module):
    """No token mixing: the block is the spiking MLP alone."""

    block_attr = "mixer"

    def __init__(self, dim: int):
        super().__init__()

    def forward(self, x):
        return x


class PoolMixer(nn.Module):
    """3x3 stride-1 pooling of the membrane input; the result replaces x (no residual, no LIF)."""

    block_attr = "mixer"

    def __init__(self, dim: int, mode: str = "max"):
        super().__init__()
        if mode == "max":
            self.pool = nn.MaxPool2d(3, 1, 1)
        else:
            self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        return unfold_time(self.pool(fold_time(x)), x.shape[0])


@register_mixer("max")
def max_mixer(dim: int) -> PoolMixer:
    """Max-Pool token mixer (Table 7)."""
    return PoolMixer(dim, mode="max")


@register_mixer("avg")
def avg_mixer(dim: int) -> PoolMixer:
    """Avg-Pool token mixer (Table 7), ``count_include_pad=False``."""
    return PoolMixer(dim, mode="avg")


class _SpikingDWC(nn.Module):
    """LIF -> depth-wise Conv2d k x k (bias) -> BN2d on ``[T, B, C, H, W]`` (Eq. 19)."""

    def __init__(self, dim: int, kernel_size: int, conv_name: str, neuron_cfg: Optional[NeuronSettings]):
        super().__init__()
        _check_odd(kernel_size, "a DWC mixer")
        self.lif = _neurons(neuron_cfg).make()
        self._conv, self._bn = conv_name, conv_name + "_bn"
        self.add_module(self._conv, nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True))
        self.add_module(self._bn, nn.BatchNorm2d(dim))

    def forward(self, x):
        y = getattr(self, self._bn)(getattr(self, self._conv)(fold_time(self.lif(x))))
        return unfold_time(y, x.shape[0])


@register_mixer("dwc")
class DWCMixer(_SpikingDWC):
    """Spiking depth-wise convolution mixer ``x + BN(DWConv_k(LIF(x)))`` (``dwc<k>``).

    Keys ``conv`` / ``conv_bn``; for k=7 the published code names them ``conv5`` / ``conv5_bn``
    (a leftover), kept so the released ImageNet checkpoints load by name.
    """

    block_attr = "mixer"

    def __init__(self, dim: int, kernel_size: int = 3, neuron_cfg: Optional[NeuronSettings] = None):
        super().__init__(dim, kernel_size, "conv5" if kernel_size == 7 else "conv", neuron_cfg)
        self.kernel_size = kernel_size

    def forward(self, x):
        return super().forward(x) + x


class _PointwiseProjections(nn.Module):
    """Base for attention mixers: named pointwise projections + BN1d on ``[T, B, C, N]``.

    ``add_projection("q", ...)`` registers ``q_conv`` (Conv1d 1x1) or ``q_linear`` (``nn.Linear``
    on ``[T*B, N, C]``, Spikformer cifar) and ``q_bn`` (BN1d, time folded into the batch): the
    published key names. ``project("q", x)`` applies them.
    """

    def __init__(self, layer: str = "conv1d"):
        super().__init__()
        if layer not in ("conv1d", "linear"):
            raise ValueError(f"projection layer must be 'conv1d' or 'linear', got {layer!r}")
        self.layer = layer
        self._suffix = "conv" if layer == "conv1d" else "linear"

    def add_projection(self, prefix: str, dim: int, bias: bool):
        fc = nn.Conv1d(dim, dim, 1, bias=bias) if self.layer == "conv1d" else nn.Linear(dim, dim, bias=bias)
        self.add_module(f"{prefix}_{self._suffix}", fc)
        self.add_module(f"{prefix}_bn", nn.BatchNorm1d(dim))

    def project(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        fc = getattr(self, f"{prefix}_{self._suffix}")
        z = fold_time(x)
        z = fc(z) if self.layer == "conv1d" else fc(z.transpose(1, 2)).transpose(1, 2)
        return unfold_time(getattr(self, f"{prefix}_bn")(z), x.shape[0])


@register_mixer("ssa")
class SSA(_PointwiseProjections):
    """Spiking self-attention (Spikformer SSA) with the Max-Former defaults.

    ``[x_lif] -> Q/K/V = LIF(BN(W x)) -> attn_lif(Q (K^T V) * scale) -> BN(proj) [-> proj_lif]
    [+ x]``. Heads split channels head-major (``c = head * d + j``). Q, K and V are binary
    spikes, so every product is an exact integer in float32 and the matmul order cannot change
    the result; ``matmul_order`` only changes the cost (``'kv_first'`` is linear in tokens).

    Options serving Spikformer (``models.spikformer``): ``input_lif=False`` (its stream already
    is spike counts), ``proj_lif=True`` (LIF after the output projection), ``scale`` (0.25 on
    CIFAR10-DVS), ``qkv_bias`` (True on CIFAR), ``layer='linear'`` (``q_linear`` ... keys),
    ``residual=False`` to add the branch outside.
    """

    block_attr = "attn"
    uses_heads = True

    def __init__(self, dim: int, num_heads: int = 8, neuron_cfg: Optional[NeuronSettings] = None,
                 scale: float = 0.125, qkv_bias: bool = False, input_lif: bool = True,
                 proj_lif: bool = False, residual: bool = True, layer: str = "conv1d",
                 matmul_order: str = "kv_first", attn_v_threshold: float = ATTN_V_THRESHOLD):
        super().__init__(layer)
        _check_heads(type(self).__name__, dim, num_heads)
        if matmul_order not in ("kv_first", "qk_first"):
            raise ValueError(f"matmul_order must be 'kv_first' or 'qk_first', got {matmul_order!r}")
        cfg = _neurons(neuron_cfg)
        self.num_heads, self.scale, self.matmul_order, self.residual = num_heads, scale, matmul_order, residual
        self.x_lif = cfg.make() if input_lif else None
        for p in ("q", "k", "v"):
            self.add_projection(p, dim, qkv_bias)
            self.add_module(f"{p}_lif", cfg.make())
        self.attn_lif = cfg.make(v_threshold=attn_v_threshold)
        self.add_projection("proj", dim, True)
        self.proj_lif = cfg.make() if proj_lif else None

    def _heads(self, p: str, s: torch.Tensor) -> torch.Tensor:
        """Binary ``p`` spikes split into heads: ``[T,B,C,N] -> [T,B,h,N,d]``."""
        z = getattr(self, f"{p}_lif")(self.project(p, s))
        T, B, C, N = z.shape
        return z.reshape(T, B, self.num_heads, C // self.num_heads, N).transpose(3, 4)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention branch up to the projection BN: ``[T,B,C,...] -> [T,B,C,N]``."""
        T, B, C = x.shape[:3]
        s = (x if self.x_lif is None else self.x_lif(x)).flatten(3)
        q, k, v = self._heads("q", s), self._heads("k", s), self._heads("v", s)
        if self.matmul_order == "kv_first":
            out = q @ (k.transpose(-2, -1) @ v)
        else:
            out = (q @ k.transpose(-2, -1)) @ v
        out = (out * self.scale).transpose(3, 4).reshape(T, B, C, -1)
        return self.project("proj", self.attn_lif(out))

    def forward(self, x):
        y = self.attention(x)
        if self.proj_lif is not None:
            y = self.proj_lif(y)
        y = y.reshape(x.shape)
        return y + x if self.residual else y


@register_mixer("ssa_dwc")
class SSADWC(SSA):
    """SSA followed by a spiking DWC (``ssa_dwc<k>``, k=5 by default; Table 7 "SSA+DWC"):
    ``x + BN(DWConv_k(LIF(BN(proj(...)))))``; the projection output only feeds the DWC.

    Published names, directly on the attention module: ``dwc_neuron`` (LIF), ``dwc`` (the
    depth-wise Conv2d) and ``dwc_bn``. Files written with this repository's earlier names
    (``dwc.conv`` / ``dwc.conv_bn``) load through ``models.legacy_names.LEGACY_NAMES``.
    """

    def __init__(self, dim: int, num_heads: int = 8, kernel_size: int = 5,
                 neuron_cfg: Optional[NeuronSettings] = None, **kwargs):
        super().__init__(dim, num_heads, neuron_cfg=neuron_cfg, **kwargs)
        _check_odd(kernel_size, "an SSA+DWC mixer")
        self.dwc_neuron = _neurons(neuron_cfg).make()
        self.dwc = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True)
        self.dwc_bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        s = self.dwc_neuron(self.attention(x).reshape(x.shape))
        return unfold_time(self.dwc_bn(self.dwc(fold_time(s))), x.shape[0]) + x


@register_mixer("qka")
class TokenQKAttention(_PointwiseProjections):
    """QKFormer token attention (QKA): ``x + BN(proj(K * LIF_0.5(sum_channels(Q))))``.

    Input LIF (published name ``proj_lif``), binary Q and K (Conv1d, no bias, BN1d, LIF); the
    per-head channel sum of Q gives a binary token mask (attention LIF, threshold 0.5) that gates
    K. No V branch and no LIF after the projection.
    """

    block_attr = "attn"
    uses_heads = True

    def __init__(self, dim: int, num_heads: int = 8, neuron_cfg: Optional[NeuronSettings] = None,
                 attn_v_threshold: float = ATTN_V_THRESHOLD):
        super().__init__("conv1d")
        _check_heads(type(self).__name__, dim, num_heads)
        cfg = _neurons(neuron_cfg)
        self.num_heads = num_heads
        self.proj_lif = cfg.make()
        for p in ("q", "k"):
            self.add_projection(p, dim, False)
            self.add_module(f"{p}_lif", cfg.make())
        self.attn_lif = cfg.make(v_threshold=attn_v_threshold)
        self.add_projection("proj", dim, True)

    def forward(self, x):
        T, B, C = x.shape[:3]
        s = self.proj_lif(x).flatten(3)
        q = self.q_lif(self.project("q", s)).reshape(T, B, self.num_heads, C // self.num_heads, -1)
        k = self.k_lif(self.project("k", s)).reshape(T, B, self.num_heads, C // self.num_heads, -1)
        mask = self.attn_lif(q.sum(dim=3, keepdim=True))
        y = self.project("proj", (mask * k).reshape(T, B, C, -1))
        return y.reshape(x.shape) + x


@register_mixer("sdsa")
class SDSA(nn.Module):
    """Spike-driven self-attention (SDT V1 ``MS_SSA_Conv``): ``x + BN(proj(Q * LIF_0.5(sum_N K*V)))``.

    Input LIF, binary Q/K/V from Conv2d 1x1 (no bias) + BN2d + LIF; per head and channel, the
    number of tokens where K and V both spike feeds a LIF (threshold 0.5) whose output masks Q.
    Linear in tokens, no scale. ``erode=True`` is SDT's CIFAR10-DVS mode (3x3 max "erode" of K, V,
    K*V and the output over the last two axes). SDT's unused ``talking_heads`` conv is not built.
    """

    block_attr = "attn"
    uses_heads = True

    def __init__(self, dim: int, num_heads: int = 8, neuron_cfg: Optional[NeuronSettings] = None,
                 erode: bool = False, attn_v_threshold: float = ATTN_V_THRESHOLD):
        super().__init__()
        _check_heads(type(self).__name__, dim, num_heads)
        cfg = _neurons(neuron_cfg)
        self.num_heads = num_heads
        self.shortcut_lif = cfg.make()
        for p in ("q", "k", "v"):
            self.add_module(f"{p}_conv", nn.Conv2d(dim, dim, 1, bias=False))
            self.add_module(f"{p}_bn", nn.BatchNorm2d(dim))
            self.add_module(f"{p}_lif", cfg.make())
        self.talking_heads_lif = cfg.make(v_threshold=attn_v_threshold)
        self.proj_conv = nn.Conv2d(dim, dim, 1, bias=True)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.erode = nn.MaxPool3d((1, 3, 3), stride=1, padding=(0, 1, 1)) if erode else None

    def _branch(self, p: str, s: torch.Tensor) -> torch.Tensor:
        y = getattr(self, f"{p}_bn")(getattr(self, f"{p}_conv")(fold_time(s)))
        return getattr(self, f"{p}_lif")(unfold_time(y, s.shape[0]))

    def _erode(self, z: torch.Tensor) -> torch.Tensor:
        if self.erode is None:
            return z
        return self.erode(z.flatten(0, 1)).reshape(z.shape)

    def _heads(self, s: torch.Tensor) -> torch.Tensor:  # [T,B,C,H,W] -> [T,B,h,N,d]
        T, B, C = s.shape[:3]
        return s.flatten(3).transpose(-1, -2).reshape(T, B, -1, self.num_heads, C // self.num_heads).transpose(2, 3)

    def forward(self, x):
        T, B, C, H, W = x.shape
        s = self.shortcut_lif(x)
        q = self._branch("q", s)
        k = self._erode(self._branch("k", s))
        v = self._erode(self._branch("v", s))
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        kv = self._erode(k * v).sum(dim=-2, keepdim=True)
        out = self._erode(q * self.talking_heads_lif(kv))
        out = out.transpose(3, 4).reshape(T, B, C, H, W)
        y = self.proj_bn(self.proj_conv(fold_time(out)))
        return unfold_time(y, T) + x
