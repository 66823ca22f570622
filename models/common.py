"""What every model family shares: the timm model API of a spiking network, its builder, kwargs and input layout.

:class:`SpikingModel` is the base class of the three families. It gives them timm's model API
(``forward_features`` / ``forward_head(pre_logits=...)`` / ``forward_intermediates`` /
``get_classifier`` / ``reset_classifier`` / ``set_grad_checkpointing`` / ``feature_info``) and a
*stateless* forward: every pass starts from fresh membrane potentials, so ``model(x)`` is a pure
function of ``x`` in any training or inference loop. Streaming use (state kept across calls) opts
in with the model kwarg ``stateful=True``; ``reset_net(model)`` then clears the state.

Time-step layout: inside the network every tensor is ``[T, B, C, H, W]`` (time major, as
spikingjelly's multi-step mode). At the timm API the time axis moves out of the way:

* ``forward_features(x)`` returns the unpooled last-stage map as ``[B, C, H, W, T]`` (timm's NCHW
  with the time steps as a trailing axis, so code that reads channels at dim 1 and space at dims
  2-3 works); :meth:`SpikingModel.forward_features_seq` returns the raw ``[T, B, C, H, W]``;
* ``forward_intermediates`` / ``features_only=True`` return per-stage maps in NCHW, reduced over
  time by the mean over T of the membrane-level stage output (``output_fmt='TNCHW'`` gives the raw
  per-step maps).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from typing import Dict, List, Optional, Set, Union

import timm
import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, load_pretrained, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from .errors import WeightsError
from .grad_checkpointing import disable_grad_checkpointing, enable_grad_checkpointing
from .legacy_names import filter_pretrained_state_dict
from .neurons import NEURON_SETTINGS, NEURONS, NeuronConfig, neuron_kwarg_types, reset_net
from .pretrained import RELEASED, as_pretrained_cfg
from .weights import read_weights, stored_model_kwargs

__all__ = ["NEURON_KWARGS", "DATA_CFG", "SpikingModel", "build_spiking_model", "variant_cfg",
           "neuron_config_from_kwargs", "resolve_in_chans", "to_time_major", "check_T",
           "init_trunc_normal"]

NEURON_KWARGS = NEURON_SETTINGS  # the model-wide neuron settings; each neuron adds its own arguments
# Passed by timm-style training scripts; the published models have no dropout / DropPath.
_DROP_KWARGS = ("drop_rate", "drop_path_rate", "drop_block_rate")
GLOBAL_POOLS = ("avg", "")

# Input size and normalisation per dataset family (timm ``pretrained_cfg``).
DATA_CFG = {
    "cifar": dict(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                  crop_pct=1.0, interpolation="bicubic"),
    "dvs": dict(input_size=(2, 128, 128), mean=(0.0, 0.0), std=(1.0, 1.0), crop_pct=1.0, interpolation="bilinear"),
    "imagenet": dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     crop_pct=0.875, interpolation="bicubic"),
}
_FRAME_DATA = ("dvs",)  # datasets whose samples are [T, C, H, W] event frames


def variant_cfg(data: str, **kwargs) -> dict:
    """One entry of a family's ``default_cfgs`` table: the data config of ``data`` plus ``kwargs``."""
    return dict(DATA_CFG[data], license="mit", **kwargs)


def neuron_config_from_kwargs(model: str, neuron="lif", neuron_impl: Optional[str] = None, T: Optional[int] = None,
                              **kwargs) -> NeuronConfig:
    """A :class:`NeuronConfig` from a model's neuron kwargs; unknown names raise a clear error.

    ``neuron`` is a short name (``'lif'``, ``'if'``, ``'plif'``), a spikingjelly neuron class name or a
    ready config; the kwargs it takes are :func:`models.neurons.neuron_kwarg_types`. ``T`` (the model's)
    reaches neurons whose constructor takes it. ``neuron_impl`` is the model-level name of
    :attr:`NeuronConfig.impl` (``'spikingjelly'``, ``'torch'``, ``'triton'``); passing both with different
    values is an error.
    """
    if neuron_impl is not None:
        if kwargs.get("impl", neuron_impl) != neuron_impl:
            raise ValueError(f"{model}: neuron_impl={neuron_impl!r} and impl={kwargs['impl']!r} disagree; "
                             "they are the same setting, pass one of them")
        kwargs["impl"] = neuron_impl
    kind = neuron.kind if isinstance(neuron, NeuronConfig) else neuron
    accepted = neuron_kwarg_types(kind)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(accepted), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise TypeError(
            f"{model} got unexpected keyword argument(s) {unknown}.{hint} Model kwargs besides the architecture are "
            f"in_chans (alias in_channels), num_classes, T, global_pool, stateful, neuron (a short name "
            f"{'|'.join(NEURONS)} or a spikingjelly neuron class name) and the kwargs of neuron {kind!r}: "
            f"{', '.join(accepted)} (impl also as neuron_impl)."
        )
    return NeuronConfig.from_kwargs(neuron, T=T, **kwargs)


def resolve_in_chans(model: str, in_channels: Optional[int], in_chans: Optional[int], default: int) -> int:
    """Input channels from ``in_chans`` (timm's name) or its alias ``in_channels``; both must agree if given."""
    if in_channels is not None and in_chans is not None and in_channels != in_chans:
        raise ValueError(f"{model}: in_chans={in_chans} and in_channels={in_channels} disagree; "
                         f"they are the same setting, pass one of them")
    value = in_chans if in_chans is not None else in_channels if in_channels is not None else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model}: in_chans must be a positive int, got {value!r}")
    return value


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
            f"(input shape {tuple(x.shape)}); pass in_chans={x.shape[2]} when creating it"
        )
    return x


def check_T(T, model: str) -> int:
    """``T`` as a positive int, or a clear error."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"{model}: T (number of time steps) must be a positive int, got {T!r}")
    return T


def init_trunc_normal(m: nn.Module, types=(nn.Linear,)) -> None:
    """Published init for layers of ``types``: weight trunc-normal(std 0.02), bias 0 (use with ``model.apply``)."""
    if isinstance(m, types):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)


def _check_global_pool(model: str, global_pool: str, num_classes: int) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{model}: global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError(f"{model}: global_pool='' needs num_classes=0: the spiking head pools the tokens "
                         f"before its neurons and classifier, so an unpooled map has no logits")
    return global_pool


class SpikingModel(nn.Module):
    """Base class of the spiking families: timm's model API and the stateless forward.

    A family builds its modules, then calls :meth:`_init_timm_api`, and implements

    * ``_stem(x)``: ``[T,B,C,H,W]`` input -> input of the first stage (identity if none);
    * ``_stages()``: per stage, the modules it runs in order (each ``[T,B,C,H,W] -> [T,B,C',H',W']``);
    * ``_head(seq, pre_logits)``: last-stage ``[T,B,C,H,W]`` -> ``[B, num_classes]`` logits, or
      ``[B, head_hidden_size]`` with ``pre_logits``;

    and names its classifier attribute in ``classifier_name``.
    """

    classifier_name = "head"

    def _init_timm_api(self, *, in_chans: int, num_classes: int, num_features: int, T: int,
                       global_pool: str, stateful: bool, feature_info: List[dict]) -> None:
        name = type(self).__name__
        self.T = check_T(T, name)
        self.in_chans = self.in_channels = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.global_pool = _check_global_pool(name, global_pool, num_classes)
        self.stateful = bool(stateful)
        self.feature_info = feature_info
        self.grad_checkpointing = False

    # ------------------------------------------------------------------ state
    def _begin(self, x: torch.Tensor) -> torch.Tensor:
        """Fresh membranes (unless ``stateful``), then the input as ``[T,B,C,H,W]``."""
        if not self.stateful:
            reset_net(self)
        return to_time_major(x, self.T, self.in_chans, type(self).__name__)

    # ------------------------------------------------------------------ features
    def forward_features_seq(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage map as the network computes it, ``[T, B, C, H', W']``."""
        x = self._stem(self._begin(x))
        for stage in self._stages():
            for unit in stage:
                x = unit(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage map ``[B, C, H', W', T]`` (timm's NCHW plus a trailing time axis).

        ``x``: ``[B,C,H,W]`` images (repeated over ``T`` steps) or ``[B,T,C,H,W]`` event frames.
        """
        return self.forward_features_seq(x).permute(1, 2, 3, 4, 0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B,C,H,W,T]`` from :meth:`forward_features` -> logits ``[B, num_classes]``.

        ``pre_logits=True`` returns what the classifier reads, ``[B, head_hidden_size]``. With
        ``global_pool=''`` (and no classifier) it returns the unpooled map averaged over T, ``[B,C,H,W]``.
        """
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__}.forward_head takes forward_features' [B,C,H,W,T] map, "
                             f"got shape {tuple(x.shape)}")
        if self.global_pool == "":
            return x.mean(-1)
        head_lif = getattr(self, "head_lif", None)
        if head_lif is not None and not self.stateful:
            reset_net(head_lif)
        return self._head(x.permute(4, 0, 1, 2, 3), pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from ``[B,C,H,W]`` images or ``[B,T,C,H,W]`` frames."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Per-stage maps (timm API), one per entry of ``feature_info``.

        Args:
            indices: the last n stages if an int, all if None, else the stage indices to return.
            norm: must be False (these networks have no final norm layer).
            stop_early: stop after the last stage asked for.
            output_fmt: ``'NCHW'``: each map is the **mean over the T time steps** of the stage's
                membrane-level output, ``[B, C, H, W]``; ``'TNCHW'``: the raw per-step maps
                ``[T, B, C, H, W]``.
            intermediates_only: return only the list of maps.

        Returns:
            ``(forward_features(x), maps)`` or ``maps``.
        """
        fmt = getattr(output_fmt, "value", output_fmt)
        if fmt not in ("NCHW", "TNCHW"):
            raise ValueError(f"output_fmt must be 'NCHW' (mean over time steps) or 'TNCHW' (raw per-step "
                             f"maps), got {output_fmt!r}")
        if norm:
            raise ValueError(f"{type(self).__name__} has no final norm layer; call with norm=False")
        stages = self._stages()
        take, max_index = feature_take_indices(len(stages), indices)
        if stop_early:
            stages = stages[:max_index + 1]
        maps = []
        x = self._stem(self._begin(x))
        for i, stage in enumerate(stages):
            for unit in stage:
                x = unit(x)
            if i in take:
                maps.append(x.mean(0) if fmt == "NCHW" else x)
        if intermediates_only:
            return maps
        return x.permute(1, 2, 3, 4, 0), maps

    # ------------------------------------------------------------------ classifier
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new Linear classifier with ``num_classes`` outputs (``0``: none, ``forward`` returns pre-logits).

        ``global_pool=''`` (with ``num_classes=0``) makes ``forward`` return the unpooled map.
        """
        pool = self.global_pool if global_pool is None else global_pool
        self.global_pool = _check_global_pool(type(self).__name__, pool, num_classes)
        self.num_classes = num_classes
        head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, head)

    # ------------------------------------------------------------------ training helpers
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each patch embedding / block in backward instead of storing its activations.

        Runs through :func:`models.grad_checkpointing.enable_grad_checkpointing`, which restores each
        unit's membrane state before the recomputation and keeps BatchNorm statistics from updating
        twice, so values and gradients equal the plain model's.
        """
        if enable:
            enable_grad_checkpointing(self)
        else:
            disable_grad_checkpointing(self)
        self.grad_checkpointing = enable

    # ------------------------------------------------------------------ optimizer groups (timm API)
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Parameters trained without weight decay: the 1-D ones (BatchNorm weights and biases, biases), the
        set the training recipe (``create_optimizer_v2(filter_bias_and_bn=True)``) already excludes."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        """Parameter groups in depth order for timm's layer-wise lr decay (``param_groups_layer_decay``):
        the stem, then one group per stage (``coarse``) or per patch embedding and block; the classifier last.
        A stage unit that is an ``nn.Sequential`` (a ResNet layer) counts as its blocks when not ``coarse``."""
        names = {id(m): n for n, m in self.named_modules()}
        blocks = []
        for i, stage in enumerate(self._stages()):
            for j, unit in enumerate(stage):
                parts = list(unit) if isinstance(unit, nn.Sequential) and not coarse else [unit]
                for k, part in enumerate(parts):
                    order = (i,) if coarse else (i, j, k)
                    blocks.append((rf"^{re.escape(names[id(part)])}\.", order))
        units = [names[id(u)] for stage in self._stages() for u in stage]
        stem = [re.escape(n) for n, m in self.named_children()
                if n != self.classifier_name and any(True for _ in m.parameters())
                and not any(u == n or u.startswith(n + ".") for u in units)]
        return dict(stem=rf"^(?:{'|'.join(stem)})\." if stem else None, blocks=blocks)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one ``indices`` asks for (timm API); returns the kept indices.

        ``prune_head`` removes the classifier (``forward_head`` then returns pre-logits); keeping it is
        refused when the last kept stage is narrower than the classifier's input. ``prune_norm`` has nothing
        to remove: these networks have no final norm layer.
        """
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        width = self.feature_info[max_index]["num_chs"]
        if not prune_head and width != self.head_hidden_size:
            raise ValueError(f"{type(self).__name__}: stage {max_index} has {width} channels but the classifier "
                             f"reads {self.head_hidden_size}; prune with prune_head=True")
        self._keep_stages(max_index + 1)
        self.feature_info = self.feature_info[:max_index + 1]
        self.num_features = self.head_hidden_size = width
        if prune_head:
            self.reset_classifier(0)
        return take

    # ------------------------------------------------------------------ family hooks
    def _keep_stages(self, n: int) -> None:
        """Remove every stage after the first ``n`` (for :meth:`prune_intermediate_layers`)."""
        raise NotImplementedError

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _stages(self) -> List[List[nn.Module]]:
        raise NotImplementedError

    def _head(self, seq: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        raise NotImplementedError


def _data_overlay(data: str, in_chans: int, num_classes: Optional[int]) -> Dict[str, object]:
    """``pretrained_cfg`` entries that follow the model kwargs: channels (mean/std: the dataset mean of
    the channel statistics, repeated, when ``in_chans`` differs from the dataset's) and classes."""
    base = DATA_CFG[data]
    overlay: Dict[str, object] = {}
    if num_classes is not None:
        overlay["num_classes"] = num_classes
    if in_chans != base["input_size"][0]:
        mean = sum(base["mean"]) / len(base["mean"])
        std = sum(base["std"]) / len(base["std"])
        overlay.update(input_size=(in_chans, *base["input_size"][1:]), mean=(mean,) * in_chans,
                       std=(std,) * in_chans)
    return overlay


def _released_names() -> str:
    return ", ".join(w.name for w in RELEASED)


def _source_cfg(variant: str, pretrained: bool, pretrained_cfg, overlay: Optional[dict]):
    """The pretrained cfg the weights are read with (tag or cfg resolved, ``overlay`` applied), checked."""
    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=as_pretrained_cfg(pretrained_cfg),
                                     pretrained_cfg_overlay=overlay)
    except RuntimeError as err:  # timm's "Invalid pretrained tag"
        tags = timm.list_pretrained(f"{variant}.*")
        raise ValueError(f"{variant}: {err} Tags: {', '.join(tags) or 'none (no released weights)'}") from None
    if pretrained and not cfg.has_weights:
        raise ValueError(
            f"{variant}: no released weights for pretrained=True (released: {_released_names()}). "
            "For a checkpoint of your own pass pretrained_cfg_overlay=dict(file=PATH) or build the model and "
            "call utils.training.checkpoint.load_checkpoint(model, PATH)")
    if pretrained and cfg.file and not cfg.state_dict and not os.path.isfile(cfg.file):
        raise WeightsError(f"{variant}: pretrained weights file not found: {cfg.file!r}; check the path "
                                f"given as pretrained_cfg_overlay=dict(file=...)")
    return cfg


def _load_pretrained(model: nn.Module, source, num_classes: int, in_chans: int, cache_dir) -> None:
    """timm's ``load_pretrained`` with our names converted; a file that does not fit, or weights that cannot be
    downloaded, raise :class:`WeightsError` naming the fix."""
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    try:
        # the released files also pickle an argparse.Namespace (their training args): allowed, nothing else
        with torch.serialization.safe_globals([argparse.Namespace]):
            load_pretrained(model, pretrained_cfg=source.to_dict(), num_classes=num_classes, in_chans=in_chans,
                            filter_fn=filter_pretrained_state_dict, strict=True, cache_dir=cache_dir)
    except WeightsError:
        raise
    except RuntimeError as err:  # filter_pretrained_state_dict's listing: the file is another model's
        where = f"{source.file!r}" if source.file else "the pretrained weights"
        raise WeightsError(f"{where}: {str(err).splitlines()[0]}\n" + "\n".join(str(err).splitlines()[1:])) \
            from None
    except OSError as err:  # no network, or the file is not (or no longer) at the URL / on the hub

        files = [w.file for w in RELEASED if source.url and w.url == source.url]
        got = f"bash imagenet/checkpoints/download.sh {files[0]}" if files else "imagenet/checkpoints/download.sh"
        local = f"imagenet/checkpoints/{files[0]}.pth.tar" if files else "PATH"
        raise WeightsError(
            f"{name}: cannot fetch the pretrained weights from {source.hf_hub_id or source.url} "
            f"({type(err).__name__}: {getattr(err, 'reason', None) or err}). Without network: fetch the file with "
            f"'{got}' where there is network, then pass pretrained_cfg_overlay=dict(file='{local}') (on the command "
            f"line: --initial-checkpoint / --checkpoint {local}).") from None


def build_spiking_model(model_cls, variant: str, pretrained: bool, /, data: str, num_stages: int,
                        variant_kwargs: Optional[dict] = None, **kwargs) -> nn.Module:
    """The one builder of every family: ``timm.models.build_model_with_cfg`` plus what spiking models need.

    Maps ``in_channels`` to timm's ``in_chans``, makes the model's ``pretrained_cfg`` follow
    ``in_chans``/``num_classes``, and turns ``features_only=True`` into timm's feature extractor over
    :meth:`SpikingModel.forward_intermediates` (``out_indices`` default: every stage). ``data`` names the
    dataset family of the config, ``variant_kwargs`` the variant's architecture (``kwargs`` override it).

    ``pretrained=True`` loads the weights of the cfg (a tag such as ``maxformer_10_768.t4_in1k``: URL, or
    ``pretrained_cfg_overlay`` ``file`` / ``hf_hub_id``) with ``timm.models.load_pretrained``: older names
    converted by :func:`models.legacy_names.filter_pretrained_state_dict`, a new classifier when
    ``num_classes`` differs, the stem adapted when ``in_chans`` does. A named tag or ``pretrained=True``
    sets ``T`` to the cfg's (models.pretrained) over the variant's, unless ``T`` is given.
    """
    for k in _DROP_KWARGS:
        if kwargs.pop(k, 0.0):
            raise ValueError(f"{variant}: {k} is not supported (the published models use no dropout/DropPath)")
    cache_dir = kwargs.pop("cache_dir", None)
    in_chans = resolve_in_chans(variant, kwargs.pop("in_channels", None), kwargs.pop("in_chans", None),
                                DATA_CFG[data]["input_size"][0])
    asked = kwargs.pop("pretrained_cfg", None)
    source = _source_cfg(variant, pretrained, asked, kwargs.pop("pretrained_cfg_overlay", None))
    weights_T = getattr(source, "T", None) if pretrained or asked is not None else None
    stored: dict = {}
    if pretrained and source.file and not source.state_dict:  # read (and checked) once, here
        obj = read_weights(source.file)
        stored = stored_model_kwargs(obj, variant)
        source = dataclasses.replace(source, state_dict=obj,  # the file's classifier rows, kept unless asked
                                     num_classes=stored.get("num_classes", source.num_classes))
    kwargs = {**(variant_kwargs or {}), **({"T": weights_T} if weights_T else {}), **stored, **kwargs}
    overlay = _data_overlay(data, in_chans, kwargs.get("num_classes"))
    model = build_model_with_cfg(
        model_cls, variant, pretrained=False, pretrained_cfg=source, pretrained_cfg_overlay=overlay,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(num_stages))),
        in_chans=in_chans, **kwargs)
    target = model if isinstance(model, SpikingModel) else model.model  # the features_only wrapper holds it
    if pretrained:
        _load_pretrained(target, source, num_classes=target.num_classes if target is model else 0, in_chans=in_chans,
                         cache_dir=cache_dir)
    target.input_frames = data in _FRAME_DATA  # read by models.factory.input_spec
    if target is not model:
        model.T = target.T
        model.input_frames = target.input_frames
    return model
