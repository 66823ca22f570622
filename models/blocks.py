"""Spiking MLP and transformer block (token mixer + MLP) with membrane shortcuts.

Both take and return membrane-level tensors ``[T, B, C, H, W]``. Every convolutional branch starts
with its own LIF and ends in BatchNorm, and residuals add BN outputs (membrane shortcut); the
parameter-free mixers (identity, max, avg) have no branch of their own.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from mixer_hub import create_mixer, fold_time, set_default_neurons, unfold_time
from .neurons import NeuronConfig

set_default_neurons(NeuronConfig)  # mixers built without neuron_cfg use the published neuron settings

__all__ = ["SpikingMLP", "Block"]


class SpikingMLP(nn.Module):
    """``LIF -> Conv1x1 (bias) -> BN -> LIF -> Conv1x1 (bias) -> BN`` plus the published residuals.

    With ``hidden == in_features`` (mlp_ratio 1, the event models) the hidden BN output also
    gets the input added, and the final residual adds that sum::

        h = BN1(fc1(LIF(x))) + x;  out = BN2(fc2(LIF(h))) + h

    otherwise ``out = BN2(fc2(LIF(BN1(fc1(LIF(x)))))) + x``.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 neuron_cfg: Optional[NeuronConfig] = None):
        super().__init__()
        cfg = neuron_cfg or NeuronConfig()
        hidden = hidden_features or in_features
        self.hidden_residual = hidden == in_features
        self.fc1_lif = cfg.make()
        self.fc1_conv = nn.Conv2d(in_features, hidden, 1, 1, bias=True)
        self.fc1_bn = nn.BatchNorm2d(hidden)
        self.fc2_lif = cfg.make()
        self.fc2_conv = nn.Conv2d(hidden, in_features, 1, 1, bias=True)
        self.fc2_bn = nn.BatchNorm2d(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        identity = x
        h = unfold_time(self.fc1_bn(self.fc1_conv(fold_time(self.fc1_lif(x)))), T)
        if self.hidden_residual:
            h = h + identity
            identity = h
        y = self.fc2_bn(self.fc2_conv(fold_time(self.fc2_lif(h))))
        return y.reshape(x.shape) + identity


class Block(nn.Module):
    """Token mixer followed by the spiking MLP.

    The residual around the mixer is the mixer's: DWC, SSA, QKA and SDSA return ``x + branch(x)``;
    the pooling mixers (``max``, ``avg``) return the pooled map in place of ``x`` and ``identity``
    returns ``x`` unchanged, as in the published code.

    The mixer is stored as ``attn`` (attention mixers) or ``mixer`` (the others), the published
    attribute names.
    """

    def __init__(self, dim: int, mixer: str, mlp_ratio: float = 4.0, num_heads: int = 8,
                 neuron_cfg: Optional[NeuronConfig] = None, **mixer_kwargs):
        super().__init__()
        m = create_mixer(mixer, dim, num_heads=num_heads, neuron_cfg=neuron_cfg, **mixer_kwargs)
        self.mixer_name = mixer
        self._mixer_attr = m.block_attr
        self.add_module(m.block_attr, m)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), neuron_cfg=neuron_cfg)

    @property
    def token_mixer(self) -> nn.Module:
        """The mixer module, whatever its attribute name."""
        return getattr(self, self._mixer_attr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.token_mixer(x))
