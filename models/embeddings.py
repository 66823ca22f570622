"""Spiking patch embeddings of Max-Former and MS-QKFormer, selectable by name.

``create_embedding(name, in_channels, embed_dims, neuron_cfg=...)`` builds one stage embedding.
Every embedding maps ``[T, B, C_in, H, W]`` to ``[T, B, E, H', W']``: a main branch and a
shortcut branch, both ending in BatchNorm, summed in membrane space (a *membrane shortcut*).
Convolutions and BatchNorms run on the time-folded ``[T*B, ...]`` tensor, so BN statistics
are taken over ``T*B*H*W`` as in the published code.

Names (``E`` = ``embed_dims`` of the stage, ``/k`` = spatial downsampling):

============== ===================================================================== =====
name           what it is                                                           down
============== ===================================================================== =====
orig           Embed-Orig: conv3x3 (raw input) -> Embed + 1x1 Embed shortcut         /1
orig_later     Embed-Orig with a stride-2 second conv (for later stages)             /2
orig_imagenet  Embed-Orig-ImageNet: stride-2 convs, 1x1 stride-2 shortcut            /4
max            Embed-Max: Max-Embed -> Embed + 1x1 Max-Embed shortcut                /2
max_plus       Embed-Max+ (event data): conv3x3 -> 3 Max-Embeds + 1x1 s4 shortcut     /8
1max           Embed-1Max, CIFAR/event layout (QKFormer stage): Embed -> Max-Embed    /2
1max_imagenet  Embed-1Max, ImageNet layout = MS-QKFormer ``PatchEmbeddingStage``       /2
qk_init        MS-QKFormer ImageNet ``PatchEmbedInit``                                /4
avg            Embed-Avg: Embed-Max with AvgPool (the published one crashes)          /2
============== ===================================================================== =====

"Embed" is LIF -> Conv -> BN and "Max-Embed" is LIF -> Conv -> BN -> MaxPool(3, 2, 1).
Module names reproduce the published ``state_dict`` keys, so the authors' checkpoints load
by name (e.g. ``patch_embed2.max_embed1.embed_conv.weight``).
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from mixer_hub import fold_time, unfold_time

from .neurons import NeuronConfig

__all__ = ["create_embedding", "embedding_names", "register_embedding", "SpikingConvBN", "DOWNSAMPLING"]

_EMBEDDINGS: Dict[str, Callable[..., nn.Module]] = {}
DOWNSAMPLING: Dict[str, int] = {}


def register_embedding(name: str, downsampling: int):
    """Class decorator: make an embedding constructible by ``name``."""

    def wrap(cls):
        if name in _EMBEDDINGS:
            raise ValueError(f"embedding {name!r} registered twice")
        _EMBEDDINGS[name] = cls
        DOWNSAMPLING[name] = downsampling
        return cls

    return wrap


def embedding_names():
    """Registered embedding names."""
    return sorted(_EMBEDDINGS)


def create_embedding(name: str, in_channels: int, embed_dims: int,
                     neuron_cfg: Optional[NeuronConfig] = None) -> nn.Module:
    """Build the patch embedding called ``name`` (``in_channels`` -> ``embed_dims``)."""
    if name not in _EMBEDDINGS:
        close = difflib.get_close_matches(str(name), embedding_names(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown patch embedding {name!r}.{hint} Known: {', '.join(embedding_names())}")
    return _EMBEDDINGS[name](in_channels, embed_dims, neuron_cfg=neuron_cfg or NeuronConfig())


def _max_pool() -> nn.Module:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)


def _check_width(name: str, embed_dims: int, k: int):
    # internal widths are E // k (floor, as published); they must not vanish
    if embed_dims // k < 1:
        raise ValueError(f"embedding {name!r} builds E//{k} channels, so it needs embed_dims >= {k}, "
                         f"got {embed_dims}")


class SpikingConvBN(nn.Module):
    """``[LIF] -> Conv2d (no bias) -> BN2d [-> pool]`` on ``[T, B, C, H, W]``.

    The published ``Embed`` / ``Max_Embed`` / ``Avg_Embed`` primitive (keys ``embed_conv``,
    ``embed_bn``). ``spiking_input=True`` skips the LIF: the input already is spikes (the 1x1
    shortcut branches reuse the spikes of the main branch). ``forward`` returns the output and,
    with ``return_spikes=True``, also the spikes it convolved.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 pool: Optional[str] = None, spiking_input: bool = False,
                 neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        self.embed_lif = None if spiking_input else (neuron_cfg or NeuronConfig()).make()
        self.embed_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.embed_bn = nn.BatchNorm2d(out_channels)
        if pool == "max":
            self.pool = _max_pool()
        elif pool == "avg":
            self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)
        elif pool is None:
            self.pool = nn.Identity()
        else:
            raise ValueError(f"pool must be 'max', 'avg' or None, got {pool!r}")

    def forward(self, x: torch.Tensor, return_spikes: bool = False):
        s = x if self.embed_lif is None else self.embed_lif(x)
        y = unfold_time(self.pool(self.embed_bn(self.embed_conv(fold_time(s)))), x.shape[0])
        return (y, s) if return_spikes else y


class _RawConvBN(nn.Module):
    """Conv3x3 (no bias) + BN on the raw (non-spiking) input; keys ``proj_conv`` / ``proj_bn``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj_conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(out_channels)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_time(self.proj_bn(self.proj_conv(fold_time(x))), x.shape[0])


@register_embedding("orig", downsampling=1)
class EmbedOrig(_RawConvBN):
    """Embed-Orig (Eq. 16): conv3x3+BN on the raw input to E/2, then
    ``Embed3x3(E/2 -> E) + Embed1x1(E/2 -> E)``. No downsampling."""

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        _check_width("orig", embed_dims, 2)
        super().__init__(in_channels, embed_dims // 2)
        self.embed1 = SpikingConvBN(embed_dims // 2, embed_dims, 3, neuron_cfg=neuron_cfg)
        self.embed2 = SpikingConvBN(embed_dims // 2, embed_dims, 1, spiking_input=True)

    def forward(self, x):
        y, s = self.embed1(self.stem(x), return_spikes=True)
        return y + self.embed2(s)


@register_embedding("max", downsampling=2)
class EmbedMax(nn.Module):
    """Embed-Max (Eq. 17): ``MaxEmbed3x3 -> Embed3x3`` plus a 1x1 Max-Embed shortcut on the
    input spikes. Downsamples by 2."""

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        self.max_embed1 = SpikingConvBN(in_channels, embed_dims, 3, pool="max", neuron_cfg=neuron_cfg)
        self.embed1 = SpikingConvBN(embed_dims, embed_dims, 3, neuron_cfg=neuron_cfg)
        self.max_embed2 = SpikingConvBN(in_channels, embed_dims, 1, pool="max", spiking_input=True)

    def forward(self, x):
        y, s = self.max_embed1(x, return_spikes=True)
        return self.embed1(y) + self.max_embed2(s)


@register_embedding("avg", downsampling=2)
class EmbedAvg(nn.Module):
    """Embed-Avg: Embed-Max with AvgPool(3, 2, 1, count_include_pad=False) in place of MaxPool.

    The published ``Embed_Avg`` crashes (its primitive never stores ``shortcut``) and hard-codes
    its input channels to E/2. Here the input channels are the real ``in_channels``; in the
    standard hierarchy (stage i+1 takes stage i's E/2 channels) the shapes are the published ones.
    """

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        self.avg_embed1 = SpikingConvBN(in_channels, embed_dims, 3, pool="avg", neuron_cfg=neuron_cfg)
        self.embed1 = SpikingConvBN(embed_dims, embed_dims, 3, neuron_cfg=neuron_cfg)
        self.avg_embed2 = SpikingConvBN(in_channels, embed_dims, 1, pool="avg", spiking_input=True)

    def forward(self, x):
        y, s = self.avg_embed1(x, return_spikes=True)
        return self.embed1(y) + self.avg_embed2(s)


@register_embedding("max_plus", downsampling=8)
class EmbedMaxPlus(_RawConvBN):
    """Embed-Max+ (Eq. 18, event data): conv3x3+BN on the raw frames to E/8, three Max-Embeds
    (E/8 -> E/4 -> E/2 -> E), plus a 1x1 stride-4 shortcut (E/4 -> E) on the spikes entering the
    second Max-Embed. Downsamples by 8."""

    _pool, _stride = "max", 1  # how each of the three stages halves the grid

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        _check_width("max_plus", embed_dims, 8)
        super().__init__(in_channels, embed_dims // 8)
        e, down = embed_dims, dict(stride=self._stride, pool=self._pool, neuron_cfg=neuron_cfg)
        self.max_embed1 = SpikingConvBN(e // 8, e // 4, 3, **down)
        self.max_embed2 = SpikingConvBN(e // 4, e // 2, 3, **down)
        self.max_embed3 = SpikingConvBN(e // 2, e, 3, **down)
        self.embed1 = SpikingConvBN(e // 4, e, 1, stride=4, spiking_input=True)

    def forward(self, x):
        y = self.max_embed1(self.stem(x))
        y, s = self.max_embed2(y, return_spikes=True)
        return self.max_embed3(y) + self.embed1(s)


@register_embedding("orig_plus", downsampling=8)
class EmbedOrigPlus(EmbedMaxPlus):
    """Embed-Orig for 128x128 event data, the "Orig" stage 1 of the paper's Table 4 DVS rows: the
    Embed-Max+ layout with every max-pool replaced by a stride-2 conv (as Embed-Orig-later
    downsamples). The published code has no such module and the paper does not define it; this
    is our reading, chosen so that the row differs from Max+/Max only in the pooling. Keys as Max+.
    """

    _pool, _stride = None, 2


@register_embedding("1max", downsampling=2)
class Embed1Max(nn.Module):
    """Embed-1Max, CIFAR/event layout (QKFormer's patch-embedding stage): ``Embed3x3 ->
    MaxEmbed3x3`` plus a 1x1 stride-2 shortcut on the input spikes. Downsamples by 2.

    The published event copy crashes (``dual`` argument); this one runs for both.
    """

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        self.embed1 = SpikingConvBN(in_channels, embed_dims, 3, neuron_cfg=neuron_cfg)
        self.max_embed1 = SpikingConvBN(embed_dims, embed_dims, 3, pool="max", neuron_cfg=neuron_cfg)
        self.embed2 = SpikingConvBN(in_channels, embed_dims, 1, stride=2, spiking_input=True)

    def forward(self, x):
        y, s = self.embed1(x, return_spikes=True)
        return self.max_embed1(y) + self.embed2(s)


@register_embedding("orig_later", downsampling=2)
class EmbedOrigLater(nn.Module):
    """Embed-Orig for later stages (published ``Embed_Orig_later``): ``embed1`` (Embed3x3) ->
    ``orig_embed1`` (Embed3x3 stride 2) plus ``embed2``, a 1x1 stride-2 shortcut on the input
    spikes. Downsamples by 2 with strided convs, no pooling.

    Files written with this repository's earlier names (``embed2`` for the strided conv,
    ``embed3`` for the shortcut) load through ``models.legacy_names.LEGACY_NAMES``.
    """

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        self.embed1 = SpikingConvBN(in_channels, embed_dims, 3, neuron_cfg=neuron_cfg)
        self.orig_embed1 = SpikingConvBN(embed_dims, embed_dims, 3, stride=2, neuron_cfg=neuron_cfg)
        self.embed2 = SpikingConvBN(in_channels, embed_dims, 1, stride=2, spiking_input=True)

    def forward(self, x):
        y, s = self.embed1(x, return_spikes=True)
        return self.orig_embed1(y) + self.embed2(s)


@register_embedding("orig_imagenet", downsampling=4)
class EmbedOrigImageNet(nn.Module):
    """Embed-Orig-ImageNet: conv3x3 s2 + BN on the raw image (E/2), ``Embed3x3 s2 (E/2 -> E) ->
    Embed3x3 (E -> E)`` plus a 1x1 stride-2 shortcut (E/2 -> E) on the spikes of the second
    embed. Downsamples by 4."""

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        _check_width("orig_imagenet", embed_dims, 2)
        e = embed_dims
        self.embed1 = SpikingConvBN(in_channels, e // 2, 3, stride=2, spiking_input=True)  # raw image, no LIF
        self.embed2 = SpikingConvBN(e // 2, e, 3, stride=2, neuron_cfg=neuron_cfg)
        self.embed3 = SpikingConvBN(e, e, 3, neuron_cfg=neuron_cfg)
        self.embed4 = SpikingConvBN(e // 2, e, 1, stride=2, spiking_input=True)

    def forward(self, x):
        y, s = self.embed2(self.embed1(x), return_spikes=True)
        return self.embed3(y) + self.embed4(s)


@register_embedding("1max_imagenet", downsampling=2)
class PatchEmbeddingStage(nn.Module):
    """Embed-1Max, ImageNet layout (MS-QKFormer ``PatchEmbeddingStage``; the same maths as the
    published imagenet ``Embed_1Max``): ``LIF -> conv3x3 -> BN -> MaxPool -> LIF -> conv3x3 -> BN``
    plus a 1x1 stride-2 shortcut on the input spikes. Downsamples by 2. MS-QKFormer key names."""

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        cfg = neuron_cfg or NeuronConfig()
        self.proj3_lif = cfg.make()
        self.proj3_conv = nn.Conv2d(in_channels, embed_dims, 3, 1, 1, bias=False)
        self.proj3_bn = nn.BatchNorm2d(embed_dims)
        self.proj3_mp = _max_pool()
        self.proj4_lif = cfg.make()
        self.proj4_conv = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, bias=False)
        self.proj4_bn = nn.BatchNorm2d(embed_dims)
        self.proj_res_conv = nn.Conv2d(in_channels, embed_dims, 1, 2, 0, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(embed_dims)

    def forward(self, x):
        T = x.shape[0]
        s = fold_time(self.proj3_lif(x))
        y = unfold_time(self.proj3_mp(self.proj3_bn(self.proj3_conv(s))), T)
        y = self.proj4_bn(self.proj4_conv(fold_time(self.proj4_lif(y))))
        return unfold_time(y + self.proj_res_bn(self.proj_res_conv(s)), T)


@register_embedding("qk_init", downsampling=4)
class PatchEmbedInit(nn.Module):
    """MS-QKFormer ImageNet ``PatchEmbedInit``: conv3x3 + BN + MaxPool on the raw image (E/2),
    ``LIF -> conv3x3 -> BN -> MaxPool -> LIF -> conv3x3 -> BN`` (E/2 -> E -> E), plus an "rpe"
    1x1 stride-2 shortcut (E/2 -> E) on the spikes of the first LIF. Downsamples by 4."""

    def __init__(self, in_channels: int, embed_dims: int, neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        _check_width("qk_init", embed_dims, 2)
        cfg = neuron_cfg or NeuronConfig()
        e = embed_dims
        self.proj_conv = nn.Conv2d(in_channels, e // 2, 3, 1, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(e // 2)
        self.proj_mp = _max_pool()
        self.proj_lif = cfg.make()
        self.proj_conv1 = nn.Conv2d(e // 2, e, 3, 1, 1, bias=False)
        self.proj_bn1 = nn.BatchNorm2d(e)
        self.proj_mp1 = _max_pool()
        self.proj_lif1 = cfg.make()
        self.proj_conv2 = nn.Conv2d(e, e, 3, 1, 1, bias=False)
        self.proj_bn2 = nn.BatchNorm2d(e)
        self.rpe_conv = nn.Conv2d(e // 2, e, 1, 2, 0, bias=False)
        self.rpe_bn = nn.BatchNorm2d(e)

    def forward(self, x):
        T = x.shape[0]
        y = unfold_time(self.proj_mp(self.proj_bn(self.proj_conv(fold_time(x)))), T)
        s = fold_time(self.proj_lif(y))
        y = unfold_time(self.proj_mp1(self.proj_bn1(self.proj_conv1(s))), T)
        y = self.proj_bn2(self.proj_conv2(fold_time(self.proj_lif1(y))))
        return unfold_time(y + self.rpe_bn(self.rpe_conv(s)), T)
