"""Spikformer (Zhou et al., ICLR 2023), the baseline of the paper's Tables 2 and 3.

``SPS`` patch embedding -> ``depths`` x (SSA + MLP, spike + spike residuals) -> token mean -> mean
over T -> Linear. Unlike Max-Former there is no membrane shortcut: every branch ends in a LIF and
its binary output is *added* to the stream (SEW "ADD"), so the stream holds integer spike counts
(``{0, ..., 2 + 2L}`` after L blocks) that feed the next projections and the head (no head LIF).

The published code comes in three folders (``cifar10``, ``imagenet``, ``cifar10dvs``) that differ in
layer types, pooling and scale; ``variant`` selects one, everything else is shared:

========= =========================== ======================== ========= ===== =========
variant   q/k/v/proj                  MLP fc1/fc2              SPS pools scale T
========= =========================== ======================== ========= ===== =========
cifar     Linear (q/k/v with bias)    Linear + BN1d            0011      0.125 repeat
imagenet  Conv1d 1x1 (q/k/v no bias)  Conv2d 1x1 + BN2d        1111      0.125 repeat
dvs       Conv1d 1x1 (q/k/v no bias)  Conv1d 1x1 + BN1d        1111      0.25  frames
========= =========================== ======================== ========= ===== =========

The published DVS code only runs 128x128 input (hard-coded reshapes); here every variant takes any
size divisible by its SPS downsampling (4 or 16) and gives the published result at 128x128.

The attention is :class:`mixer_hub.SSA` (``input_lif=False``, ``proj_lif=True``, no inner residual).
The LayerNorms (and, for DVS, ``pos_embed`` and ``norm``) that the published code builds but never
calls are not built; :meth:`Spikformer.filter_reference_state_dict` drops their keys when an
authors' state_dict is loaded. All other keys and shapes equal the published ones.
"""
from __future__ import annotations

import functools
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from mixer_hub import SSA, fold_time, unfold_time

from .neurons import NeuronConfig
from .common import (SpikingModel, build_spiking_model, init_trunc_normal, neuron_config_from_kwargs,
                     resolve_in_chans, variant_cfg)

__all__ = ["SPS", "SpikformerMLP", "SpikformerBlock", "Spikformer", "VARIANTS", "default_cfgs"]

# Per-folder differences of the published code (spikformer.md §2).
VARIANTS: Dict[str, dict] = {
    "cifar": dict(layer="linear", mlp_layer="linear", qkv_bias=True, pools=(False, False, True, True), scale=0.125),
    "imagenet": dict(layer="conv1d", mlp_layer="conv2d", qkv_bias=False, pools=(True, True, True, True), scale=0.125),
    "dvs": dict(layer="conv1d", mlp_layer="conv1d", qkv_bias=False, pools=(True, True, True, True), scale=0.25),
}
# Keys of modules the published code builds but never uses in forward.
_UNUSED_REFERENCE_KEYS = re.compile(r"(pos_embed|norm\.(weight|bias)|block\.\d+\.norm[12]\.(weight|bias))")


class SPS(nn.Module):
    """Spiking patch splitting: 4 x (conv3x3 -> BN -> LIF [-> MaxPool(3,2,1)]) plus the "rpe" branch.

    Widths E/8, E/4, E/2, E; ``pools[i]`` adds the max-pool (on spikes) after stage ``i``. The
    output is ``x + LIF(BN(conv3x3(x)))`` with x the last (pooled) spike map: values in {0, 1, 2},
    ``[T,B,C,H,W] -> [T,B,E,H',W']``. ``(0,0,1,1)`` is the CIFAR layout (/4), ``(1,1,1,1)`` the
    ImageNet and DVS layout (/16).
    """

    def __init__(self, in_channels: int, embed_dims: int, pools: Sequence[bool] = (False, False, True, True),
                 neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        if len(pools) != 4:
            raise ValueError(f"SPS has 4 conv stages; pools needs 4 flags, got {tuple(pools)}")
        if embed_dims % 8:
            raise ValueError(f"SPS widths are embed_dims/8, /4, /2, /1; embed_dims={embed_dims} is not a multiple of 8")
        cfg = neuron_cfg or NeuronConfig()
        self.pools = tuple(bool(p) for p in pools)
        widths = (in_channels, embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims)
        for i, suffix in enumerate(("", "1", "2", "3")):  # published names proj_conv, proj_conv1, ...
            self.add_module(f"proj_conv{suffix}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            self.add_module(f"proj_bn{suffix}", nn.BatchNorm2d(widths[i + 1]))
            self.add_module(f"proj_lif{suffix}", cfg.make())
            if self.pools[i]:
                self.add_module(f"maxpool{suffix}", nn.MaxPool2d(3, 2, 1))
        self.rpe_conv = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dims)
        self.rpe_lif = cfg.make()

    @property
    def downsampling(self) -> int:
        return 2 ** sum(self.pools)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        x = fold_time(x)
        for i, suffix in enumerate(("", "1", "2", "3")):
            x = getattr(self, f"proj_bn{suffix}")(getattr(self, f"proj_conv{suffix}")(x))
            x = fold_time(getattr(self, f"proj_lif{suffix}")(unfold_time(x, T)))
            if self.pools[i]:
                x = getattr(self, f"maxpool{suffix}")(x)
        r = unfold_time(self.rpe_bn(self.rpe_conv(x)), T)
        return self.rpe_lif(r) + unfold_time(x, T)


class SpikformerMLP(nn.Module):
    """``fc1 -> BN -> LIF -> fc2 -> BN -> LIF`` on ``[T,B,C,H,W]`` (no leading LIF, no residual inside).

    ``layer`` is the published layer type: ``'linear'`` (``fc1_linear``, token-major, BN1d),
    ``'conv1d'`` (``fc1_conv`` Conv1d 1x1, BN1d) or ``'conv2d'`` (``fc1_conv`` Conv2d 1x1, BN2d).
    """

    LAYERS = ("linear", "conv1d", "conv2d")

    def __init__(self, dim: int, hidden: int, layer: str = "linear", neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"SpikformerMLP layer must be one of {self.LAYERS}, got {layer!r}")
        cfg = neuron_cfg or NeuronConfig()
        self.layer = layer
        self._fc = "linear" if layer == "linear" else "conv"
        for i, (cin, cout) in enumerate(((dim, hidden), (hidden, dim)), start=1):
            if layer == "linear":
                fc, bn = nn.Linear(cin, cout), nn.BatchNorm1d(cout)
            elif layer == "conv1d":
                fc, bn = nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout)
            else:
                fc, bn = nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)
            self.add_module(f"fc{i}_{self._fc}", fc)
            self.add_module(f"fc{i}_bn", bn)
            self.add_module(f"fc{i}_lif", cfg.make())

    def _fc_bn(self, i: int, x: torch.Tensor) -> torch.Tensor:
        T, spatial = x.shape[0], x.shape[3:]
        fc, bn = getattr(self, f"fc{i}_{self._fc}"), getattr(self, f"fc{i}_bn")
        z = fold_time(x)
        if self.layer == "linear":
            # Token-major contiguous input as in the published code: [T*B, N, C] -> Linear -> [T*B, C', N].
            z = bn(fc(z.flatten(2).transpose(1, 2).contiguous()).transpose(1, 2))
        elif self.layer == "conv1d":
            z = bn(fc(z.flatten(2)))
        else:
            z = bn(fc(z))
        return unfold_time(z, T).reshape(*x.shape[:2], -1, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1_lif(self._fc_bn(1, x))
        return self.fc2_lif(self._fc_bn(2, x))


class SpikformerBlock(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)``: both branches end in a LIF, so spikes are added to the stream."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer: str = "linear",
                 mlp_layer: str = "linear", qkv_bias: bool = True, scale: float = 0.125,
                 neuron_cfg: Optional[NeuronConfig] = None, attn_v_threshold: float = 0.5):
        super().__init__()
        self.attn = SSA(dim, num_heads, neuron_cfg=neuron_cfg, scale=scale, qkv_bias=qkv_bias, input_lif=False,
                        proj_lif=True, residual=False, layer=layer, attn_v_threshold=attn_v_threshold)
        self.mlp = SpikformerMLP(dim, int(dim * mlp_ratio), mlp_layer, neuron_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Spikformer(SpikingModel):
    """Spikformer-L-D: SPS, ``depths`` blocks of width ``embed_dims``, token/time mean, Linear head.

    Args:
        variant: ``'cifar'``, ``'imagenet'`` or ``'dvs'``: the published folder whose layer types,
            SPS pooling and attention scale to use (table in the module docstring).
        embed_dims, depths, num_heads, mlp_ratios: width D, blocks L, heads (must divide D), MLP ratio.
        in_chans (alias ``in_channels``), num_classes: input channels (3 images, 2 event frames) and
            classes (0: no classifier).
        T: time steps a ``[B,C,H,W]`` image is repeated over; ``[B,T,C,H,W]`` frames bring their own T.
        pools, layer, mlp_layer, qkv_bias, scale: override single entries of the variant.
        global_pool: ``'avg'`` or ``''`` (no pooling, no classifier).
        stateful: keep membrane potentials across forward calls (default: fresh every call).
        neuron, tau, v_threshold, v_reset, detach_reset, surrogate, alpha: neuron settings reaching
            every neuron (``v_reset=None`` or ``'soft'``: soft reset; ``neuron``: ``'lif'``, ``'if'``,
            ``'plif'`` or a spikingjelly neuron class name, whose own arguments are kwargs too);
            ``attn_v_threshold`` (0.5) is the threshold of the attention LIF.

    Feature maps (``feature_info``, ``forward_intermediates``) are the block outputs (one per block,
    all at the SPS resolution), as for timm's ViTs.
    """

    def __init__(self, variant: str = "cifar", embed_dims: int = 384, depths: int = 4, num_heads: int = 12,
                 mlp_ratios: float = 4.0, in_channels: Optional[int] = None, num_classes: int = 10, T: int = 4,
                 pools: Optional[Sequence[bool]] = None, layer: Optional[str] = None,
                 mlp_layer: Optional[str] = None, qkv_bias: Optional[bool] = None, scale: Optional[float] = None,
                 attn_v_threshold: float = 0.5, neuron="lif", in_chans: Optional[int] = None,
                 global_pool: str = "avg", stateful: bool = False, **neuron_kwargs):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Spikformer variant {variant!r}; choose one of {tuple(VARIANTS)}")
        in_chans = resolve_in_chans("Spikformer", in_channels, in_chans, 3)
        for name, v in (("embed_dims", embed_dims), ("depths", depths), ("num_heads", num_heads),
                        ("num_classes", num_classes)):
            low = 1 if name in ("embed_dims", "num_heads") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"Spikformer: {name} must be an int >= {low}, got {v!r}")
        if embed_dims % num_heads:
            raise ValueError(f"Spikformer: embed_dims={embed_dims} is not divisible by num_heads={num_heads}; "
                             f"choose num_heads among the divisors of {embed_dims}")
        if not mlp_ratios > 0:
            raise ValueError(f"Spikformer: mlp_ratios must be > 0, got {mlp_ratios!r}")
        overrides = dict(pools=pools, layer=layer, mlp_layer=mlp_layer, qkv_bias=qkv_bias, scale=scale)
        cfg = dict(VARIANTS[variant], **{k: v for k, v in overrides.items() if v is not None})
        self.variant, self.config = variant, cfg
        self.neuron_cfg = neuron_config_from_kwargs("Spikformer", neuron, T=T, **neuron_kwargs)
        reduction = 2 ** sum(bool(p) for p in cfg["pools"])
        self._init_timm_api(in_chans=in_chans, num_classes=num_classes, num_features=embed_dims, T=T,
                            global_pool=global_pool, stateful=stateful,
                            feature_info=[dict(num_chs=embed_dims, reduction=reduction, module=f"block.{i}")
                                          for i in range(depths)])

        self.patch_embed = SPS(in_chans, embed_dims, cfg["pools"], self.neuron_cfg)
        self.block = nn.ModuleList(
            SpikformerBlock(embed_dims, num_heads, mlp_ratios, cfg["layer"], cfg["mlp_layer"], cfg["qkv_bias"],
                            cfg["scale"], self.neuron_cfg, attn_v_threshold)
            for _ in range(depths))
        self.head = nn.Linear(embed_dims, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_trunc_normal)  # published init: Linear only; convs and BN keep PyTorch defaults

    def filter_reference_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Drop the keys of the published modules that never run (block LayerNorms, DVS ``pos_embed``/``norm``)."""
        own = self.state_dict().keys()
        return {k: v for k, v in state_dict.items()
                if k in own or not _UNUSED_REFERENCE_KEYS.fullmatch(k)}

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def _stages(self) -> List[List[nn.Module]]:
        """One stage per block; the stream is integer-valued spike counts ``[T,B,D,H',W']``."""
        return [[blk] for blk in self.block]

    def _keep_stages(self, n: int) -> None:
        self.block = self.block[:n]

    def _head(self, seq: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = seq.flatten(3).mean(3).mean(0)
        return x if pre_logits else self.head(x)


# ------------------------------------------------------------------ registered variants
_DEFAULTS = {
    "spikformer_4_384": dict(variant="cifar", embed_dims=384, depths=4, num_heads=12, in_channels=3,
                             num_classes=10, T=4),
    "spikformer_8_384": dict(variant="imagenet", embed_dims=384, depths=8, num_heads=6, in_channels=3,
                             num_classes=1000, T=4),
    "spikformer_8_512": dict(variant="imagenet", embed_dims=512, depths=8, num_heads=8, in_channels=3,
                             num_classes=1000, T=4),
    "spikformer_8_768": dict(variant="imagenet", embed_dims=768, depths=8, num_heads=12, in_channels=3,
                             num_classes=1000, T=4),
    "spikformer_2_256": dict(variant="dvs", embed_dims=256, depths=2, num_heads=16, in_channels=2,
                             num_classes=10, T=16),
}


def _create_spikformer(variant: str, pretrained: bool = False, **kwargs) -> Spikformer:
    """``_DEFAULTS[variant]`` updated by ``kwargs`` through timm's builder; data config of the registered variant."""
    config = {k: v for k, v in _DEFAULTS[variant].items() if k != "in_channels"}  # channels: the data config's
    kwargs = {**config, **kwargs}
    # Spikformer's own ``variant`` kwarg (the published folder) is bound here: timm's builder has one too
    model_cls = functools.partial(Spikformer, variant=kwargs.pop("variant"))
    return build_spiking_model(model_cls, variant, pretrained, data=_DEFAULTS[variant]["variant"],
                               num_stages=kwargs["depths"], **kwargs)


def _cfg(data: str, pool: int, **kwargs) -> dict:
    size = variant_cfg(data)["input_size"][1]
    return variant_cfg(data, first_conv="patch_embed.proj_conv", classifier="head",
                       pool_size=(size // pool, size // pool), **kwargs)


default_cfgs = generate_default_cfgs({
    "spikformer_4_384": _cfg("cifar", 4, num_classes=10),
    # the published ImageNet recipe evaluates full images (crop_pct 1.0)
    "spikformer_8_384": _cfg("imagenet", 16, crop_pct=1.0),
    "spikformer_8_512": _cfg("imagenet", 16, crop_pct=1.0),
    "spikformer_8_768": _cfg("imagenet", 16, crop_pct=1.0),
    "spikformer_2_256": _cfg("dvs", 16, num_classes=10),
})


@register_model
def spikformer_4_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-4-384, CIFAR (Table 2: 9.32 M at 10 classes, T=4)."""
    return _create_spikformer("spikformer_4_384", pretrained, **kwargs)


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-8-384, ImageNet (Table 3: 16.81 M, T=4)."""
    return _create_spikformer("spikformer_8_384", pretrained, **kwargs)


@register_model
def spikformer_8_512(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-8-512, ImageNet (29.68 M, T=4; the published registry's only ImageNet model)."""
    return _create_spikformer("spikformer_8_512", pretrained, **kwargs)


@register_model
def spikformer_8_768(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-8-768, ImageNet (Table 3: 66.34 M, T=4)."""
    return _create_spikformer("spikformer_8_768", pretrained, **kwargs)


@register_model
def spikformer_2_256(pretrained: bool = False, **kwargs) -> Spikformer:
    """Spikformer-2-256, CIFAR10-DVS / DVS128 Gesture (Table 2: 2.57 M at 10 classes; T=16 frames)."""
    return _create_spikformer("spikformer_2_256", pretrained, **kwargs)
