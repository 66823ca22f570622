"""Building our models: the one place every command line goes through.

* :func:`list_our_models` — the names this repository registers with timm (and no others);
* :func:`create_model` — any of them from a name and kwargs, with errors that say the fix;
* :func:`parse_model_kwargs` — the one ``key=value`` grammar of every ``--model-kwargs`` flag;
* :func:`input_spec` — the input a model takes, read from its registered config (never from its name).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch.nn as nn
import yaml

__all__ = ["ModelError", "OUR_MODULES", "list_our_models", "create_model", "parse_model_kwargs", "parse_value",
           "InputSpec", "input_spec"]

# timm registers a model under the last component of its module's name.
OUR_MODULES = ("maxformer", "ms_resnet", "spikformer")


class ModelError(ValueError):
    """An unknown model name or kwargs a model rejects; the message names the problem and the fix."""


def list_our_models(pattern: str = "*") -> List[str]:
    """Sorted names of the models this repository registers (optionally filtered by a glob ``pattern``)."""
    import timm

    from . import maxformer, ms_resnet, spikformer  # noqa: F401  (registration)

    return sorted(timm.list_models(pattern, module=list(OUR_MODULES)))


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a registered model (ours, or any other registered with timm);
    bad names or kwargs raise :class:`ModelError` (with close matches among our models).

    Keyword arguments whose value is ``None`` are dropped (the model's default applies).
    """
    import timm

    ours = list_our_models()
    if name not in ours and not timm.is_model(name):
        close = difflib.get_close_matches(name, ours, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Registered: {', '.join(ours)}."
        raise ModelError(f"unknown model '{name}'.{hint}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ModelError(f"model '{name}' rejected kwargs {kwargs}: {err}") from None
    except ValueError as err:
        raise ModelError(f"model '{name}' with kwargs {kwargs}: {err}") from None


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
