"""Max-ResNet and MS-ResNet: spiking ResNets with membrane shortcuts (paper §4.4, Table 5).

One class, :class:`SpikingResNet`, built from per-layer specs (width, depth, stride, and whether the
layer's first block downsamples with a max-pool instead of a strided conv). Every block is
pre-activation MS-ResNet style: ``LIF -> conv3x3 -> BN [-> max-pool] -> LIF -> conv3x3 -> BN``, and
the block output is the BN output plus the *membrane* input (no LIF after the add), so the residual
stream carries real values, not spikes.

Registered variants (``timm.create_model(name, num_classes=..., T=..., neuron=...)``):

- ``max_resnet18``: the published ``cifar10-100/max_resnet.py::max_resnet18`` (blocks [3,3,2],
  widths 128/256/512 after a 64-channel stem; the first block of layers 2 and 3 downsamples with
  ``MaxPool2d(3, 2, 1)`` after its first BN). 12,502,090 parameters at 10 classes.
- ``ms_resnet18``: the same network with strided 3x3 convs instead of the two max-pools
  (MS-ResNet-18 [3,3,2], Table 5).
- ``max_resnet18_2222``: ResNet-18 layout [2,2,2,2], widths 64/128/256/512 after a 64-channel
  stem. The published code has no such model; following App. A.3 ("a single Max-Pool per layer, the
  first layer kept unchanged") every downsampling block (first block of layers 2, 3, 4) uses the
  max-pool instead of the strided conv. 11,173,962 parameters at 10 classes, 11,220,132 at 100
  (Table 5 lists 11.22 M).

Parameters and buffers carry the published names (``conv1``, ``bn1``, ``layer1.0.conv1``...,
``layer1.0.downsample.{1,2}``, ``fc1``), so the authors' checkpoints load as they are. Modules are
also *constructed* in the published order (stem, then per layer the shortcut before the blocks,
then the classifier), so a given seed yields the published initial weights. The timm model API
(features per layer, classifier reset, stateless forward) comes from :class:`models.common.SpikingModel`.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer as sj_layer
from timm.models import generate_default_cfgs, register_model

from .common import SpikingModel, build_spiking_model, variant_cfg, neuron_config_from_kwargs, resolve_in_chans
from .neurons import NeuronConfig

__all__ = [
    "ResNetLayer",
    "MSBasicBlock",
    "SpikingResNet",
    "max_resnet18",
    "max_resnet18_2222",
    "ms_resnet18",
    "default_cfgs",
]

def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Module:
    return sj_layer.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
                           step_mode="m")


def _bn(ch: int) -> nn.Module:
    return sj_layer.BatchNorm2d(ch, step_mode="m")


@dataclasses.dataclass(frozen=True)
class ResNetLayer:
    """One residual layer: ``depth`` blocks of ``width`` channels.

    The first block downsamples by ``stride``; with ``max_pool`` it does so with
    ``MaxPool2d(3, stride, 1)`` after its first BN (Max-ResNet) instead of a strided conv1 (MS-ResNet).
    """

    width: int
    depth: int
    stride: int = 1
    max_pool: bool = False

    def __post_init__(self):
        for name in ("width", "depth", "stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ResNetLayer.{name} must be a positive int, got {v!r}")


class MSBasicBlock(nn.Module):
    """MS-ResNet basic block on membrane potentials ``[T,B,C,H,W]``.

    ``LIF -> conv3x3(stride) -> BN [-> max-pool] -> LIF -> conv3x3 -> BN``, plus the shortcut: the raw
    input, or ``downsample(input)`` (1x1 conv + BN on the membrane input, not on spikes).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        max_pool: bool = False,
        downsample: Optional[nn.Module] = None,
        neuron_cfg: Optional[NeuronConfig] = None,
    ):
        super().__init__()
        cfg = neuron_cfg or NeuronConfig()
        self.lif1 = cfg.make()
        self.conv1 = _conv(in_ch, out_ch, 3, stride=1 if max_pool else stride)
        self.bn1 = _bn(out_ch)
        self.pool = sj_layer.MaxPool2d(3, stride, 1, step_mode="m") if max_pool else nn.Identity()
        self.lif2 = cfg.make()
        self.conv2 = _conv(out_ch, out_ch, 3)
        self.bn2 = _bn(out_ch)
        # Built by the caller before this block (published RNG order), registered last (published key order).
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.pool(self.bn1(self.conv1(self.lif1(x))))
        out = self.bn2(self.conv2(self.lif2(out)))
        return out + identity


class SpikingResNet(SpikingModel):
    """Spiking ResNet with membrane shortcuts (MS-ResNet; Max-ResNet with ``max_pool`` layers).

    Stem ``conv3x3 -> BN`` (no LIF), the residual ``layers``, then the readout
    ``LIF -> global average pool -> Linear per time step -> mean over T``.

    Args:
        layers: per-layer specs, :class:`ResNetLayer` or ``(width, depth, stride, max_pool)`` tuples.
        stem_width: output channels of the stem conv.
        in_chans (alias ``in_channels``): input channels (3 for images, 2 for event frames).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the pooled features).
        T: time steps a ``[B,C,H,W]`` image is repeated over (``[B,T,C,H,W]`` input brings its own T).
        global_pool: ``'avg'`` or ``''`` (no pooling, no classifier).
        stateful: keep membrane potentials across forward calls (default: fresh every call).
        neuron: ``'lif'``, ``'if'``, ``'plif'``, a spikingjelly neuron class name (its own constructor arguments
            are kwargs too) or a :class:`NeuronConfig`; the remaining neuron kwargs
            (``tau``, ``v_threshold``, ``v_reset``, ``detach_reset``, ``surrogate``, ``alpha``) reach
            every neuron.
    """

    classifier_name = "fc1"

    def __init__(
        self,
        layers: Sequence,
        stem_width: int = 64,
        in_channels: Optional[int] = None,
        num_classes: int = 10,
        T: int = 4,
        neuron="lif",
        in_chans: Optional[int] = None,
        global_pool: str = "avg",
        stateful: bool = False,
        **neuron_kwargs,
    ):
        super().__init__()
        name = type(self).__name__
        if not layers:
            raise ValueError(f"{name} needs at least one layer spec")
        specs = [s if isinstance(s, ResNetLayer) else ResNetLayer(*s) for s in layers]
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"{name}: num_classes must be an int >= 0, got {num_classes!r}")
        in_chans = resolve_in_chans(name, in_channels, in_chans, 3)
        cfg = neuron_config_from_kwargs(name, neuron, T=T, **neuron_kwargs)
        self.neuron_cfg = cfg
        self.layer_specs = tuple(specs)
        reduction, feature_info = 1, []
        for i, spec in enumerate(specs, start=1):
            reduction *= spec.stride
            feature_info.append(dict(num_chs=spec.width, reduction=reduction, module=f"layer{i}"))
        self._init_timm_api(in_chans=in_chans, num_classes=num_classes, num_features=specs[-1].width, T=T,
                            global_pool=global_pool, stateful=stateful, feature_info=feature_info)

        self.conv1 = _conv(in_chans, stem_width, 3)
        self.bn1 = _bn(stem_width)
        in_ch = stem_width
        for i, spec in enumerate(specs, start=1):
            self.add_module(f"layer{i}", self._make_layer(in_ch, spec, cfg))
            in_ch = spec.width
        self.head_lif = cfg.make()
        self.avgpool = sj_layer.AdaptiveAvgPool2d(1, step_mode="m")
        self.fc1 = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _make_layer(in_ch: int, spec: ResNetLayer, cfg: NeuronConfig) -> nn.Sequential:
        downsample = None
        if spec.stride != 1 or in_ch != spec.width:
            # Index 0 is the published code's parameter-free slot; keeping it keeps the key names
            # ``downsample.1`` / ``downsample.2`` of the authors' checkpoints.
            downsample = nn.Sequential(nn.Identity(), _conv(in_ch, spec.width, 1, spec.stride), _bn(spec.width))
        blocks = [MSBasicBlock(in_ch, spec.width, spec.stride, spec.max_pool, downsample, cfg)]
        blocks += [MSBasicBlock(spec.width, spec.width, neuron_cfg=cfg) for _ in range(spec.depth - 1)]
        return nn.Sequential(*blocks)

    @property
    def layers(self):
        return [getattr(self, f"layer{i}") for i in range(1, len(self.layer_specs) + 1)]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))

    def _stages(self) -> List[List[nn.Module]]:
        return [[layer] for layer in self.layers]

    def _keep_stages(self, n: int) -> None:
        for i in range(n + 1, len(self.layer_specs) + 1):
            delattr(self, f"layer{i}")
        self.layer_specs = self.layer_specs[:n]

    def _head(self, seq: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.avgpool(self.head_lif(seq)).flatten(2)  # [T,B,C]
        return x.mean(0) if pre_logits else self.fc1(x).mean(0)


def _create_resnet(variant: str, default_layers, pretrained: bool = False, **kwargs) -> SpikingResNet:
    """``SpikingResNet(layers, **kwargs)`` for CIFAR input through timm's builder (a ``layers`` kwarg overrides)."""
    layers = kwargs.pop("layers", default_layers)
    return build_spiking_model(SpikingResNet, variant, pretrained, data="cifar", num_stages=len(layers),
                               layers=layers, **kwargs)


def _cfg(pool: int, **kwargs) -> dict:
    return variant_cfg("cifar", num_classes=10, first_conv="conv1", classifier="fc1",
                       pool_size=(32 // pool, 32 // pool), **kwargs)


default_cfgs = generate_default_cfgs({
    "max_resnet18": _cfg(4),
    "ms_resnet18": _cfg(4),
    "max_resnet18_2222": _cfg(8),
})

# (width, depth, stride, max_pool)
_MAX_RESNET18 = ((128, 3, 1, False), (256, 3, 2, True), (512, 2, 2, True))
_MS_RESNET18 = ((128, 3, 1, False), (256, 3, 2, False), (512, 2, 2, False))
_MAX_RESNET18_2222 = ((64, 2, 1, False), (128, 2, 2, True), (256, 2, 2, True), (512, 2, 2, True))


@register_model
def max_resnet18(pretrained: bool = False, **kwargs) -> SpikingResNet:
    """Max-ResNet-18 [3,3,2] (Table 5: 12.50 M, 97.17 / 83.06 on CIFAR-10 / 100)."""
    return _create_resnet("max_resnet18", _MAX_RESNET18, pretrained, **kwargs)


@register_model
def ms_resnet18(pretrained: bool = False, **kwargs) -> SpikingResNet:
    """MS-ResNet-18 [3,3,2], Max-ResNet-18 without its max-pools (Table 5: 12.50 M)."""
    return _create_resnet("ms_resnet18", _MS_RESNET18, pretrained, **kwargs)


@register_model
def max_resnet18_2222(pretrained: bool = False, **kwargs) -> SpikingResNet:
    """Max-ResNet-18 [2,2,2,2] (Table 5: 11.22 M, 96.81 / 81.54); our layout, see the module docstring."""
    return _create_resnet("max_resnet18_2222", _MAX_RESNET18_2222, pretrained, **kwargs)
