"""Helpers shared by every model family: kwargs handling, input layout, timm data configs."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .neurons import NeuronConfig

__all__ = ["NEURON_KWARGS", "DATA_CFG", "neuron_config_from_kwargs", "pop_timm_kwargs", "to_time_major",
           "check_T", "data_config", "init_trunc_normal"]

NEURON_KWARGS = tuple(f.name for f in dataclasses.fields(NeuronConfig) if f.name != "kind")
# Passed by timm.create_model to every entry point; nothing here is hosted on a hub.
_TIMM_IGNORED_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
# Passed by timm-style training scripts; the published models have no dropout / DropPath.
_DROP_KWARGS = ("drop_rate", "drop_path_rate", "drop_block_rate")

# Input size and normalisation per dataset family (timm ``pretrained_cfg``).
DATA_CFG = {
    "cifar": dict(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                  crop_pct=1.0, interpolation="bicubic"),
    "dvs": dict(input_size=(2, 128, 128), mean=(0.0, 0.0), std=(1.0, 1.0), crop_pct=1.0, interpolation="bilinear"),
    "imagenet": dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     crop_pct=0.875, interpolation="bicubic"),
}


def neuron_config_from_kwargs(model: str, neuron="lif", **kwargs) -> NeuronConfig:
    """A :class:`NeuronConfig` from a model's neuron kwargs; unknown names raise a clear error."""
    unknown = sorted(set(kwargs) - set(NEURON_KWARGS))
    if unknown:
        raise TypeError(
            f"{model} got unexpected keyword argument(s) {unknown}. Neuron kwargs are "
            f"neuron='lif'|'if', {', '.join(NEURON_KWARGS)}."
        )
    return NeuronConfig.from_kwargs(neuron, **kwargs)


def pop_timm_kwargs(name: str, pretrained: bool, kwargs: dict) -> dict:
    """``kwargs`` without what ``timm.create_model`` and training scripts add but these models do not use."""
    if pretrained:
        raise ValueError(
            f"{name}: no weights are hosted for timm's pretrained=True; build the model, then load the "
            "authors' checkpoint with utils.checkpoint.load_checkpoint(model, path)"
        )
    kwargs = {k: v for k, v in kwargs.items() if k not in _TIMM_IGNORED_KWARGS}
    for k in _DROP_KWARGS:
        if kwargs.pop(k, 0.0):
            raise ValueError(f"{name}: {k} is not supported (the published models use no dropout/DropPath)")
    return kwargs


def to_time_major(x: torch.Tensor, T: int, in_channels: int, model: str) -> torch.Tensor:
    """``[B,C,H,W]`` images repeated over ``T`` steps, or ``[B,T,C,H,W]`` frames, as ``[T,B,C,H,W]``.

    Frames bring their own number of steps (as in the published event code), so a model trained
    on 16 frames also evaluates on fewer or more.
    """
    if x.dim() == 4:
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    elif x.dim() == 5:
        x = x.transpose(0, 1).contiguous()
    else:
        raise ValueError(
            f"{model} expects [B,C,H,W] images or [B,T,C,H,W] frames, got a {x.dim()}-D tensor "
            f"of shape {tuple(x.shape)}"
        )
    if x.shape[2] != in_channels:
        raise ValueError(
            f"{model} was built for {in_channels} input channels but got {x.shape[2]} "
            f"(input shape {tuple(x.shape)}); pass in_channels={x.shape[2]} when creating it"
        )
    return x


def check_T(T, model: str) -> int:
    """``T`` as a positive int, or a clear error."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"{model}: T (number of time steps) must be a positive int, got {T!r}")
    return T


def data_config(data: str, name: str, model: nn.Module, first_conv: str, classifier: str, **overrides) -> dict:
    """timm ``pretrained_cfg`` of a variant: input size and normalisation of its dataset.

    Also records on ``model`` whether it takes event frames ``[B,T,C,H,W]`` (``input_frames``, read by
    :func:`models.factory.input_spec`).
    """
    model.input_frames = data == "dvs"
    return dict(DATA_CFG[data], num_classes=model.num_classes, first_conv=first_conv, classifier=classifier,
                architecture=name, **overrides)


def init_trunc_normal(m: nn.Module, types=(nn.Linear,)) -> None:
    """Published init for layers of ``types``: weight trunc-normal(std 0.02), bias 0 (use with ``model.apply``)."""
    if isinstance(m, types):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
