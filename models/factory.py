"""Building our models: the one place every command line goes through.

* :func:`list_our_models` — the names this repository registers with timm (and no others);
* :func:`create_model` — any of them from a name and kwargs, with errors that say the fix;
* :func:`build_model` — the one builder every command uses: a name, ``T``, ``num_classes`` and the user's
  ``model_kwargs`` (checked once here), optionally on the meta device (no memory: a check or a plan; built once
  per process and settings, each caller gets its own copy);
* :func:`check_model_kwargs` — kwargs checked against the registered model's constructor (names with
  did-you-mean, value types) before anything is built;
* :func:`parse_model_kwargs` — the one ``key=value`` grammar of every ``--model-kwargs`` flag;
* :func:`input_spec` — the input a model takes, read from its registered config (never from its name).
"""
from __future__ import annotations

import collections
import collections.abc
import copy
import dataclasses
import difflib
import inspect
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import yaml
from timm.models import model_entrypoint

from .common import SpikingModel
from .errors import ModelError
from .neurons import NeuronConfig, neuron_kwarg_types

__all__ = ["ModelError", "family_modules", "list_our_models", "create_model", "build_model", "check_model_kwargs",
           "TOP_LEVEL_KWARGS", "model_kwarg_types",
           "parse_model_kwargs", "parse_value", "InputSpec", "input_spec"]


def _spiking_model_classes() -> List[type]:
    found, todo = [], list(SpikingModel.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found.append(cls)
    return found


def family_modules() -> List[str]:
    """The model families: the modules of ``models/`` that define a :class:`~models.common.SpikingModel`, named as
    timm names a model's module (its last component). ``models/__init__.py`` imports each family, the one place
    a family is registered (docs/models.md, "Adding a model family")."""
    return sorted({cls.__module__.rpartition(".")[2] for cls in _spiking_model_classes()
                   if cls.__module__.startswith(__package__ + ".")})


def list_our_models(pattern: str = "*") -> List[str]:
    """Sorted names of the models this repository registers (optionally filtered by a glob ``pattern``)."""
    return sorted(timm.list_models(pattern, module=family_modules()))


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a registered model (ours, or any other registered with timm);
    bad names or kwargs raise :class:`ModelError` (with close matches among our models).

    Keyword arguments whose value is ``None`` are dropped (the model's default applies).
    """
    check_model_kwargs(name, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ModelError(f"model '{name}' rejected kwargs {kwargs}: {err}") from None
    except ValueError as err:
        raise ModelError(f"model '{name}' with kwargs {kwargs}: {err}") from None


# Settings given on their own (config keys / flags), never inside model_kwargs.
TOP_LEVEL_KWARGS = ("T", "num_classes")


def build_model(name: str, *, T: Optional[int] = None, num_classes: Optional[int] = None,
                model_kwargs: Optional[Mapping[str, Any]] = None, neuron_impl: Optional[str] = None,
                meta: bool = False, **builder_kwargs) -> nn.Module:
    """Model ``name`` with ``T``, ``num_classes`` and the user's ``model_kwargs``: the builder of training,
    validation, the benchmark, the analyses, the memory planner and checkpoint loading.

    ``model_kwargs`` may not set ``T``/``num_classes`` (:data:`TOP_LEVEL_KWARGS`); ``neuron_impl`` (``'auto'``
    or None: the model's choice) must agree with one given in ``model_kwargs``. ``builder_kwargs`` go to
    ``timm.create_model`` (``pretrained``, ``pretrained_cfg_overlay``, ...). Raises :class:`ModelError`.

    ``meta``: build on the meta device (shapes only, no memory, no weights), the cheap build of the config check,
    the memory planner (which gives it fake storage), the doctor and checkpoint conversion. Meta models are
    built once per process for each name and settings (the last :data:`META_CACHE_SIZE` kept) and each call
    returns a deep copy, which the caller may change freely.
    """
    kwargs = dict(model_kwargs or {})
    check_model_kwargs(name, kwargs, top_level=TOP_LEVEL_KWARGS)
    if neuron_impl not in (None, "auto"):
        if kwargs.get("neuron_impl", neuron_impl) != neuron_impl:
            raise ModelError(f"neuron_impl: {neuron_impl} but model_kwargs sets neuron_impl={kwargs['neuron_impl']}; "
                             "set one of them")
        kwargs["neuron_impl"] = neuron_impl
    kwargs.update(builder_kwargs)
    kwargs.update({k: v for k, v in (("T", T), ("num_classes", num_classes)) if v is not None})
    if meta:
        return copy.deepcopy(_meta_model(name, kwargs))
    return create_model(name, **kwargs)


META_CACHE_SIZE = 8  # meta models kept per process (a training start uses one; a long step's memory plan two more)
_META_MODELS: "collections.OrderedDict[Any, nn.Module]" = collections.OrderedDict()


def _meta_model(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """The meta-device model of ``name`` and ``kwargs``, built on the first request (never changed: copy it)."""
    key = _settings_key(name, kwargs)
    model = _META_MODELS.get(key) if key is not None else None
    if model is None:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        if key is not None:
            _META_MODELS[key] = model
            while len(_META_MODELS) > META_CACHE_SIZE:
                _META_MODELS.popitem(last=False)
    else:
        _META_MODELS.move_to_end(key)
    return model


def _settings_key(name: str, kwargs: Mapping[str, Any]) -> Optional[Tuple[Any, ...]]:
    """A hashable key for ``name`` and ``kwargs`` (None values dropped, as the builder drops them; types kept, so
    ``1``, ``1.0`` and ``True`` differ); None when a value cannot be a key (that build is not kept): unhashable,
    or an object hashed by identity that could change after the build (classes and functions are kept)."""
    def frozen(v: Any) -> Any:
        if isinstance(v, Mapping):
            return ("map", tuple(sorted((str(k), frozen(x)) for k, x in v.items())))
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, tuple(frozen(x) for x in v))
        if type(v).__hash__ is object.__hash__ and not callable(v):
            raise TypeError(f"{type(v).__name__} is hashed by identity")
        hash(v)
        return (type(v).__name__, v)

    try:
        return name, frozen({k: v for k, v in kwargs.items() if v is not None})
    except TypeError:
        return None


# Keyword arguments that timm.create_model and our builder take besides the constructor's (no type checked).
_BUILDER_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
                   "cache_dir", "scriptable", "exportable", "no_jit", "features_only", "out_indices", "feature_cls",
                   "drop_rate", "drop_path_rate", "drop_block_rate")
_INT32_MAX = 2 ** 31 - 1
# Values a constructor documents besides its annotation (NeuronConfig: v_reset='soft' is the soft reset).
_ALSO_ACCEPTED = {"v_reset": ("soft",)}


def _check_name(name: str) -> None:
    ours = list_our_models()
    if not isinstance(name, str) or (name not in ours and not timm.is_model(name)):
        close = difflib.get_close_matches(str(name), ours, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Registered: {', '.join(ours)}."
        raise ModelError(f"unknown model '{name}'.{hint}")


def _model_class(name: str) -> Optional[type]:
    """The class a registered model of ours builds: the :class:`SpikingModel` defined in its entry point's module."""
    module = getattr(model_entrypoint(name), "__module__", None)
    found = [cls for cls in _spiking_model_classes() if cls.__module__ == module]
    return found[0] if len(found) == 1 else None


def model_kwarg_types(name: str, neuron: Any = None) -> Optional[Dict[str, Any]]:
    """``{kwarg: annotation or None}`` that model ``name`` accepts, read from its class's constructor (plus the
    settings of ``neuron`` (default: the model's) its ``**kwargs`` takes and timm's builder kwargs); None for a
    model that is not ours."""
    _check_name(name)
    cls = _model_class(name) if name in list_our_models() else None
    if cls is None:
        return None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: check the names only
        hints = {}
    out: Dict[str, Any] = {k: None for k in _BUILDER_KWARGS}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            kind = neuron.kind if isinstance(neuron, NeuronConfig) else neuron or "lif"
            try:
                out.update(neuron_kwarg_types(kind))
            except ValueError as err:  # an unknown neuron name: did-you-mean
                raise ModelError(f"model '{name}': {err}") from None
            out["neuron_impl"] = out["impl"]  # the model-level name of the neuron's impl
        elif p.kind is not p.VAR_POSITIONAL:
            out[p.name] = hints.get(p.name)
    return out


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is Any:
        return True
    if origin is Union:
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (collections.abc.Sequence, list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    return not isinstance(hint, type) or isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(_describe(a) for a in args if a is not type(None))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (collections.abc.Sequence, list, tuple) or hint in (list, tuple):
        elem = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(
            args[0] if args else None, "values")
        return f"a list of {elem}"
    return getattr(hint, "__name__", str(hint))


def _what(value: Any) -> str:
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return f"the list {list(value)!r}"
    return f"{type(value).__name__} {value!r}"


def check_model_kwargs(name: str, kwargs: Mapping[str, Any], top_level: Iterable[str] = ()) -> None:
    """Refuse, before anything is built, an unknown model, a kwarg that the model's constructor does not take
    (did-you-mean from its own signature) or a value of the wrong type; :class:`ModelError` says which and
    the fix. ``None`` values mean "the default" and pass. ``top_level``: keys that are set on their own, not
    in these kwargs (:data:`TOP_LEVEL_KWARGS` for a user's ``model_kwargs``)."""
    for k in top_level:
        if k in kwargs:
            raise ModelError(f"model_kwargs sets '{k}'; use the top-level config key '{k}' instead "
                             f"(e.g. --{k.replace('_', '-')} {kwargs[k]})")
    types = model_kwarg_types(name, kwargs.get("neuron"))
    if types is None:
        return
    for key, value in kwargs.items():
        if key not in types:
            close = difflib.get_close_matches(str(key), list(types), n=3, cutoff=0.6)
            hint = (f"Did you mean: {', '.join(close)}?" if close else
                    f"It takes: {', '.join(k for k in types if k not in _BUILDER_KWARGS)}.")
            raise ModelError(f"model '{name}' has no setting '{key}'. {hint}")
        items = value if isinstance(value, (list, tuple)) else [value]
        big = [v for v in items if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _INT32_MAX]
        if big:
            raise ModelError(f"'{key}' of model '{name}' is {value!r}: {big[0]} is larger than any size a model "
                             f"can have (at most {_INT32_MAX})")
        hint_t = types[key]
        if value is None or hint_t is None or value in _ALSO_ACCEPTED.get(key, ()) or _fits(value, hint_t):
            continue
        fix = ""
        if isinstance(value, str):
            parsed = parse_value(value)
            if not isinstance(parsed, str) and _fits(parsed, hint_t):
                fix = f"; write {key}: {value} without quotes"
        raise ModelError(f"'{key}' of model '{name}' takes {_describe(hint_t)}, got {_what(value)}{fix}")


def parse_value(text: str) -> Any:
    """One ``--model-kwargs`` value as YAML reads it (``64``, ``2.5``, ``true``, ``none``, ``[orig, max, max]``);
    a bare comma list (``1,1,2``) is a list too."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        low = value.lower()
        if low in ("none", "null"):
            return None
        if "," in value:
            return [parse_value(t.strip()) for t in value.split(",") if t.strip()]
        if any(c in low for c in ".e") and not low.startswith(("n", "i")):  # YAML 1.1 misses '6e-2'
            try:
                return float(value)
            except ValueError:
                pass
    return value


def parse_model_kwargs(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    """``['embed_dims=64', 'mixers=[ssa,ssa,ssa]']`` -> ``{'embed_dims': 64, 'mixers': ['ssa', 'ssa', 'ssa']}``."""
    out: Dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ModelError(f"model kwargs are key=value pairs, got {item!r} (e.g. embed_dims=64 neuron=if)")
        out[key.strip()] = parse_value(value.strip())
    return out


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``channels`` x ``img_size`` images, repeated over T steps inside the model, or,
    when ``frames`` is set, ``[B, frames, C, H, W]`` event frames that bring their own time steps."""

    channels: int
    img_size: int
    frames: Optional[int] = None

    def shape(self, batch_size: int, img_size: Optional[int] = None, T: Optional[int] = None) -> Tuple[int, ...]:
        """Input tensor shape for ``batch_size`` samples (``img_size``/``T`` override the registered ones)."""
        size = img_size or self.img_size
        if self.frames is None:
            return (batch_size, self.channels, size, size)
        return (batch_size, T or self.frames, self.channels, size, size)


def input_spec(model: nn.Module) -> InputSpec:
    """The input of a built model, from its registered data config (``pretrained_cfg``) and time steps."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in cfg:
        raise ModelError(f"{type(model).__name__} has no registered input_size (build it with create_model)")
    channels, _, size = cfg["input_size"]
    frames = getattr(model, "T", None) if getattr(model, "input_frames", False) else None
    return InputSpec(int(channels), int(size), frames)
