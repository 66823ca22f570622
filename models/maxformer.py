"""Max-Former and MS-QKFormer: one hierarchical spiking transformer built from stage specs.

``SpikingTransformer(embeds, mixers, depths, embed_dims, ...)`` stacks, per stage, a patch
embedding (:mod:`models.embeddings`) and ``depth`` blocks of a token mixer (:mod:`mixer_hub`)
plus a spiking MLP, then reads out with token mean -> LIF -> Linear. Every model of the paper,
and every ablation row of its Tables 4 and 7, is a set of kwargs of this class::

    SpikingTransformer(embeds=("orig", "max", "max"), mixers=("identity", "dwc3", "ssa"),
                       depths=(1, 1, 2), embed_dims=384, num_classes=100, T=4)

Registered timm variants: ``maxformer_cifar``, ``ms_qkformer_cifar``, ``maxformer_dvs``,
``ms_qkformer_dvs``, ``maxformer_10_{384,512,768}``, ``ms_qkformer_10_{384,512,768}``.
Module names reproduce the published state_dict keys (``patch_embed{i}``, ``stage{i}.{j}``,
``head``), so the authors' checkpoints load by name. The timm model API (features, classifier reset,
stateless forward, time-step layout) comes from :class:`models.common.SpikingModel`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from mixer_hub import is_attention_mixer

from .blocks import Block
from .embeddings import DOWNSAMPLING, create_embedding
from .common import (SpikingModel, build_spiking_model, init_trunc_normal, neuron_config_from_kwargs, resolve_in_chans,
                     variant_cfg)
from .neurons import NeuronConfig
from .pretrained import released_cfgs

__all__ = ["SpikingTransformer", "VARIANTS", "default_cfgs"]

HEADS = ("mean_then_linear", "linear_then_mean")
WEIGHT_INITS = ("cifar", "imagenet")


def _per_stage(name: str, value, n: int) -> tuple:
    """Broadcast a scalar to ``n`` stages or check a sequence has ``n`` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} stages "
                             f"(embeds has {n}); give one value per stage or a single value")
        return tuple(value)
    return (value,) * n


class SpikingTransformer(SpikingModel):
    """Hierarchical spiking transformer (Max-Former / MS-QKFormer family).

    Args:
        embeds: patch embedding name per stage (``orig``, ``max``, ``max_plus``, ``1max``, ...).
        mixers: token mixer name per stage (``identity``, ``dwc3``, ``ssa``, ``qka``, ...).
        depths: blocks per stage.
        embed_dims: width of the last stage E; stage ``i`` of ``n`` has ``E // 2**(n-1-i)``
            (E/4, E/2, E for 3 stages; E/2, E for 2), or a sequence of per-stage widths.
        mlp_ratios: MLP hidden ratio (scalar or per stage). Ratio 1 enables the MLP's extra
            hidden residual (the event models).
        num_heads: attention heads (scalar or per stage); must divide the attention widths.
        in_chans (alias ``in_channels``), num_classes: input channels and classes (0: no classifier).
        T: time steps. ``[B,C,H,W]`` inputs are repeated T times; ``[B,T,C,H,W]`` inputs are
            transposed to ``[T,B,C,H,W]`` and bring their own number of steps.
        head: ``'mean_then_linear'`` (cifar/event: mean over T, then Linear) or
            ``'linear_then_mean'`` (imagenet: Linear per step, then mean over T).
        weight_init: ``'cifar'`` (trunc-normal Linear only, the cifar/event code) or
            ``'imagenet'`` (trunc-normal Conv2d, BN 1/0; Linear/Conv1d keep PyTorch defaults).
        global_pool: ``'avg'`` (token mean before the head LIF) or ``''`` (no pooling, no classifier).
        stateful: keep membrane potentials across forward calls (streaming); default: every
            forward starts from fresh membranes.
        neuron, tau, v_threshold, v_reset, detach_reset, surrogate, alpha: spiking neuron
            settings reaching every neuron (see :class:`models.neurons.NeuronConfig`; ``neuron``: ``'lif'``,
            ``'if'``, ``'plif'`` or a spikingjelly neuron class name, whose own arguments are kwargs too);
            ``v_reset=None`` or ``'soft'`` selects the soft reset. Attention LIFs keep
            threshold ``attn_v_threshold`` (0.5).
    """

    def __init__(self, embeds: Sequence[str] = ("orig", "max", "max"),
                 mixers: Sequence[str] = ("identity", "dwc3", "ssa"),
                 depths: Union[int, Sequence[int]] = (1, 1, 2),
                 embed_dims: Union[int, Sequence[int]] = 384,
                 mlp_ratios: Union[float, Sequence[float]] = 4.0,
                 num_heads: Union[int, Sequence[int]] = 8,
                 in_channels: Optional[int] = None, num_classes: int = 10, T: int = 4,
                 head: str = "mean_then_linear", weight_init: str = "cifar",
                 neuron: Union[str, NeuronConfig] = "lif", attn_v_threshold: float = 0.5,
                 in_chans: Optional[int] = None, global_pool: str = "avg", stateful: bool = False,
                 **neuron_kwargs):
        super().__init__()
        if isinstance(embeds, str) or isinstance(mixers, str):
            raise ValueError("embeds and mixers take one name per stage, e.g. embeds=('orig', 'max', 'max')")
        n = len(embeds)
        if n == 0:
            raise ValueError("embeds must name at least one stage")
        if len(mixers) != n:
            raise ValueError(f"mixers has {len(mixers)} entries but embeds has {n}; give one mixer per stage")
        depths = _per_stage("depths", depths, n)
        mlp_ratios = _per_stage("mlp_ratios", mlp_ratios, n)
        heads = _per_stage("num_heads", num_heads, n)
        if isinstance(embed_dims, (list, tuple)):
            dims = _per_stage("embed_dims", embed_dims, n)
        else:
            scale = 2 ** (n - 1)
            if embed_dims < scale:
                raise ValueError(f"embed_dims={embed_dims} is too small for {n} stages "
                                 f"(stage widths E//{scale} ... E must be >= 1)")
            dims = tuple(embed_dims // 2 ** (n - 1 - i) for i in range(n))  # floor, as published
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        for i, (d, m, h) in enumerate(zip(dims, mixers, heads)):
            if is_attention_mixer(m) and (h < 1 or d % h):
                raise ValueError(f"stage {i + 1}: width {d} is not divisible by num_heads={h} "
                                 f"(mixer {m!r}); choose embed_dims/num_heads so every attention "
                                 f"stage width is a multiple of its head count")
        for i, dep in enumerate(depths):
            if int(dep) < 0:
                raise ValueError(f"depths[{i}] must be >= 0, got {dep}")

        self.neuron_cfg = neuron_config_from_kwargs("SpikingTransformer", neuron, T=T, **neuron_kwargs)
        in_chans = resolve_in_chans("SpikingTransformer", in_channels, in_chans, 3)
        self.head_order = head
        self.embeds, self.mixers, self.depths, self.dims = tuple(embeds), tuple(mixers), depths, dims
        self.num_stages = n
        reduction = 1
        feature_info = []
        for i, e in enumerate(embeds):
            reduction *= DOWNSAMPLING.get(e, 1)
            feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stage{i + 1}"))
        self._init_timm_api(in_chans=in_chans, num_classes=num_classes, num_features=dims[-1], T=T,
                            global_pool=global_pool, stateful=stateful, feature_info=feature_info)

        # all embeddings first, then all stages: the published registration (state_dict) order
        for i, in_ch in enumerate((in_chans,) + dims[:-1]):
            self.add_module(f"patch_embed{i + 1}",
                            create_embedding(embeds[i], in_ch, dims[i], neuron_cfg=self.neuron_cfg))
        for i in range(n):
            self.add_module(f"stage{i + 1}", nn.ModuleList(
                Block(dims[i], mixers[i], mlp_ratio=mlp_ratios[i], num_heads=heads[i],
                      neuron_cfg=self.neuron_cfg, attn_v_threshold=attn_v_threshold)
                for _ in range(int(depths[i]))))
        self.head_lif = self.neuron_cfg.make()
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_cifar if weight_init == "cifar" else self._init_imagenet)

    @staticmethod
    def _init_cifar(m: nn.Module):
        init_trunc_normal(m, nn.Linear)

    @staticmethod
    def _init_imagenet(m: nn.Module):
        init_trunc_normal(m, nn.Conv2d)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0)

    @property
    def downsampling(self) -> int:
        """Total spatial downsampling of the embeddings (input side / last-stage side)."""
        return math.prod(DOWNSAMPLING[e] for e in self.embeds)

    def _stages(self) -> List[List[nn.Module]]:
        return [[getattr(self, f"patch_embed{i}"), *getattr(self, f"stage{i}")] for i in range(1, self.num_stages + 1)]

    def _keep_stages(self, n: int) -> None:
        for i in range(n + 1, self.num_stages + 1):
            delattr(self, f"patch_embed{i}")
            delattr(self, f"stage{i}")
        self.num_stages = n
        self.embeds, self.mixers, self.depths, self.dims = (v[:n] for v in (self.embeds, self.mixers, self.depths,
                                                                            self.dims))

    def _head(self, seq: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        """Token mean -> LIF -> readout (order set by ``head``)."""
        s = self.head_lif(seq.flatten(3).mean(3))
        if pre_logits:
            return s.mean(0)
        if self.head_order == "mean_then_linear":
            return self.head(s.mean(0))
        return self.head(s).mean(0)


# --------------------------------------------------------------------------------- variants
_CIFAR = dict(in_channels=3, num_classes=10, T=4, head="mean_then_linear", weight_init="cifar",
              embed_dims=384, mlp_ratios=4, num_heads=8, depths=(1, 1, 2))
_DVS = dict(in_channels=2, num_classes=10, T=16, head="mean_then_linear", weight_init="cifar",
            embed_dims=256, mlp_ratios=1, num_heads=16, depths=(1, 1))
_IMAGENET = dict(in_channels=3, num_classes=1000, T=4, head="linear_then_mean", weight_init="imagenet",
                 mlp_ratios=4, depths=(1, 2, 7))

MAXFORMER_CIFAR = dict(_CIFAR, embeds=("orig", "max", "max"), mixers=("identity", "dwc3", "ssa"))
MS_QKFORMER_CIFAR = dict(_CIFAR, embeds=("orig", "1max", "1max"), mixers=("qka", "qka", "ssa"))
MAXFORMER_DVS = dict(_DVS, embeds=("max_plus", "max"), mixers=("dwc3", "ssa"))
MS_QKFORMER_DVS = dict(_DVS, embeds=("max_plus", "1max"), mixers=("qka", "ssa"))
MAXFORMER_IMAGENET = dict(_IMAGENET, embeds=("orig_imagenet", "max", "max"), mixers=("dwc7", "dwc5", "ssa"))
MS_QKFORMER_IMAGENET = dict(_IMAGENET, embeds=("qk_init", "1max_imagenet", "1max_imagenet"),
                            mixers=("qka", "qka", "ssa"))


def _imagenet(base: dict, width: int) -> dict:
    return dict(base, embed_dims=width, num_heads=width // 64)


# Registered name -> architecture config (kwargs of SpikingTransformer; creation kwargs override them).
VARIANTS: Dict[str, Dict[str, Any]] = {
    "maxformer_cifar": MAXFORMER_CIFAR,
    "ms_qkformer_cifar": MS_QKFORMER_CIFAR,
    "maxformer_dvs": MAXFORMER_DVS,
    "ms_qkformer_dvs": MS_QKFORMER_DVS,
    **{f"maxformer_10_{w}": _imagenet(MAXFORMER_IMAGENET, w) for w in (384, 512, 768)},
    **{f"ms_qkformer_10_{w}": _imagenet(MS_QKFORMER_IMAGENET, w) for w in (384, 512, 768)},
}


def _create_spiking_transformer(variant: str, data: str, pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """``VARIANTS[variant]`` updated by ``kwargs``, built for ``data`` (cifar/dvs/imagenet) by timm's builder."""
    config = {k: v for k, v in VARIANTS[variant].items() if k != "in_channels"}  # channels: the data config's
    return build_spiking_model(SpikingTransformer, variant, pretrained, data=data,
                               num_stages=len(kwargs.get("embeds", config["embeds"])), variant_kwargs=config, **kwargs)


def _cfg(data: str, first_conv: str, pool: int, **kwargs) -> dict:
    """Config of a variant: its dataset's input and normalisation; ``pool``: input side / last-stage side."""
    size = variant_cfg(data)["input_size"][1]
    return variant_cfg(data, first_conv=first_conv, classifier="head", pool_size=(size // pool, size // pool), **kwargs)


default_cfgs = generate_default_cfgs({
    "maxformer_cifar": _cfg("cifar", "patch_embed1.proj_conv", 4, num_classes=10),
    "ms_qkformer_cifar": _cfg("cifar", "patch_embed1.proj_conv", 4, num_classes=10),
    "maxformer_dvs": _cfg("dvs", "patch_embed1.proj_conv", 16, num_classes=10),
    "ms_qkformer_dvs": _cfg("dvs", "patch_embed1.proj_conv", 16, num_classes=10),
    # ImageNet: one tagged cfg per released file (models.pretrained), e.g. maxformer_10_768.t4_in1k
    **{k: v for w in (384, 512, 768)
       for k, v in released_cfgs(f"maxformer_10_{w}", _cfg("imagenet", "patch_embed1.embed1.embed_conv", 16)).items()},
    **{k: v for w in (384, 512, 768)
       for k, v in released_cfgs(f"ms_qkformer_10_{w}", _cfg("imagenet", "patch_embed1.proj_conv", 16)).items()},
})


@register_model
def maxformer_cifar(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """Max-Former, CIFAR (Table 2): embeds orig/max/max, mixers identity/dwc3/ssa, depths 1/1/2, E=384, T=4."""
    return _create_spiking_transformer("maxformer_cifar", "cifar", pretrained, **kwargs)


@register_model
def ms_qkformer_cifar(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """MS-QKFormer, CIFAR: embeds orig/1max/1max, mixers qka/qka/ssa, depths 1/1/2, E=384, T=4."""
    return _create_spiking_transformer("ms_qkformer_cifar", "cifar", pretrained, **kwargs)


@register_model
def maxformer_dvs(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """Max-Former, event data (CIFAR10-DVS, DVS128 Gesture): embeds max_plus/max, mixers dwc3/ssa, E=256, T=16."""
    return _create_spiking_transformer("maxformer_dvs", "dvs", pretrained, **kwargs)


@register_model
def ms_qkformer_dvs(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """MS-QKFormer, event data: embeds max_plus/1max, mixers qka/ssa, E=256, T=16."""
    return _create_spiking_transformer("ms_qkformer_dvs", "dvs", pretrained, **kwargs)


@register_model
def maxformer_10_384(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """Max-Former-10-384, ImageNet (Table 3): embeds orig_imagenet/max/max, mixers dwc7/dwc5/ssa, depths 1/2/7."""
    return _create_spiking_transformer("maxformer_10_384", "imagenet", pretrained, **kwargs)


@register_model
def maxformer_10_512(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """Max-Former-10-512, ImageNet (Table 3)."""
    return _create_spiking_transformer("maxformer_10_512", "imagenet", pretrained, **kwargs)


@register_model
def maxformer_10_768(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """Max-Former-10-768, ImageNet (Table 3)."""
    return _create_spiking_transformer("maxformer_10_768", "imagenet", pretrained, **kwargs)


@register_model
def ms_qkformer_10_384(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """MS-QKFormer-10-384, ImageNet: embeds qk_init/1max_imagenet/1max_imagenet, mixers qka/qka/ssa, depths 1/2/7."""
    return _create_spiking_transformer("ms_qkformer_10_384", "imagenet", pretrained, **kwargs)


@register_model
def ms_qkformer_10_512(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """MS-QKFormer-10-512, ImageNet."""
    return _create_spiking_transformer("ms_qkformer_10_512", "imagenet", pretrained, **kwargs)


@register_model
def ms_qkformer_10_768(pretrained: bool = False, **kwargs) -> SpikingTransformer:
    """MS-QKFormer-10-768, ImageNet."""
    return _create_spiking_transformer("ms_qkformer_10_768", "imagenet", pretrained, **kwargs)
