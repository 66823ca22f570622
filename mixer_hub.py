"""Token mixers of the spiking transformers, selectable by name.

``create_mixer(name, dim, num_heads=..., neuron_cfg=...)`` builds one. Names:
``identity``, ``avg``, ``max``, ``dwc<k>`` (any odd k: dwc3, dwc5, dwc7, ...), ``ssa``,
``ssa_dwc``, ``qka``, ``sdsa``. New mixers register with ``@register_mixer("name")``.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Dict

import torch.nn as nn

_MIXERS: Dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str):
    """Class/function decorator: make a mixer constructible by ``name``."""

    def wrap(fn):
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} registered twice")
        _MIXERS[name] = fn
        return fn

    return wrap


def mixer_names():
    """Registered mixer names (``dwc<k>`` accepts any odd k)."""
    return sorted(_MIXERS)


def create_mixer(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the token mixer called ``name`` for ``dim`` channels."""
    m = re.fullmatch(r"dwc(\d+)", name)
    if m:
        return _MIXERS["dwc"](dim, kernel_size=int(m.group(1)), **kwargs)
    if name not in _MIXERS:
        close = difflib.get_close_matches(name, mixer_names() + ["dwc3", "dwc5", "dwc7"], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown token mixer {name!r}.{hint} Known: {', '.join(mixer_names())}, dwc<odd k>")
    return _MIXERS[name](dim, **kwargs)
