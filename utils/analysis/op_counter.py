"""The paper's operation count (App. B, Eq. 22-24): MACs and SOPs per module at the aten level
(:class:`PaperOpCounter`), spiking layers' firing rates (:class:`FiringRateMonitor`) and the Table 9 columns a
module belongs to (:func:`table9_group`). :mod:`utils.analysis.energy` turns the counts into energy."""
from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based.op_counter import BaseCounter

from models.neurons import spiking_modules

__all__ = ["EnergyConfig", "DEFAULT_CONFIG", "LayerOps", "PaperOpCounter", "FiringRateMonitor", "table9_group",
           "TABLE9_COLUMNS"]

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
    """Energy per operation (45 nm, Horowitz 2014, as in the paper) and counting options."""

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    integer_inputs_as_ac: bool = False

    def __post_init__(self):
        for name in ("e_mac_pj", "e_ac_pj"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite non-negative number of pJ, got {v}")


DEFAULT_CONFIG = EnergyConfig()


# ----------------------------------------------------------------------------- operand inspection
def _binary_rate(x: torch.Tensor) -> Optional[float]:
    """Firing rate of ``x`` if every value is 0 or 1, else ``None``."""
    if x.dtype == torch.bool:
        return int(x.count_nonzero().item()) / x.numel() if x.numel() else 0.0
    if not x.is_floating_point() and x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return None
    if x.numel() == 0:
        return 0.0
    nonzero = x != 0
    if not bool((~nonzero | (x == 1)).all().item()):
        return None
    return int(nonzero.count_nonzero().item()) / x.numel()  # exact, unlike a float32 mean


def _count_mean(x: torch.Tensor) -> Optional[float]:
    """Mean of ``x`` if it holds non-negative integers (spike counts), else ``None``."""
    if x.numel() == 0 or not bool(((x >= 0) & (x == torch.round(x))).all().item()):
        return None
    return float(x.double().mean().item())


@dataclasses.dataclass
class LayerOps:
    """Accumulated operation counts of one module (summed over the batch, all T and all calls)."""

    name: str
    kind: str  # conv / linear / matmul
    macs: float = 0.0  # dense multiply-accumulates of all calls (the FLOPs of Eq. 22, times B)
    mac_flops: float = 0.0  # part of ``macs`` charged at E_MAC (real-valued input)
    sops: float = 0.0  # synaptic operations charged at E_AC
    spike_elems: float = 0.0  # for the input firing rate: sum of r * numel over spike-input calls
    spike_numel: float = 0.0
    input: str = ""  # 'spike', 'real', 'count' or a combination

    @property
    def input_rate(self) -> Optional[float]:
        return self.spike_elems / self.spike_numel if self.spike_numel else None

    def add_input_kind(self, kind: str) -> None:
        kinds = set(filter(None, self.input.split("+"))) | {kind}
        self.input = "+".join(sorted(kinds))


class PaperOpCounter(BaseCounter):
    """spikingjelly ``BaseCounter`` that applies the paper's MAC/SOP rule per module.

    Use inside ``DispatchCounterMode([counter])``. ``names`` maps module objects to their qualified
    names so each op is attributed to the innermost module that ran it (e.g. an attention module for
    its matrix products). :meth:`get_total` returns dense MACs; :attr:`layers` holds the split.
    """

    def __init__(self, names: Dict[nn.Module, str], config: EnergyConfig = DEFAULT_CONFIG):
        super().__init__()
        self.names = names
        self.config = config
        self.layers: "OrderedDict[str, LayerOps]" = OrderedDict()
        self.rules = {
            aten.convolution.default: self._conv,
            aten.mm.default: self._mm,
            aten.addmm.default: self._addmm,
            aten.bmm.default: self._mm,
            aten.baddbmm.default: self._addmm,
        }
        self._scope = "<root>"
        self._is_linear = False

    # -- BaseCounter API
    def count(self, func, args, kwargs, out, active_modules=None, parent_names=None) -> int:
        best, depth, is_linear = "<root>", -1, False
        for m in active_modules or ():
            name = self.names.get(m)
            if name is not None and name.count(".") + 1 > depth:
                best, depth, is_linear = name, name.count(".") + 1, isinstance(m, nn.Linear)
        self._scope = best or "<root>"
        self._is_linear = is_linear
        return int(self.rules[func](args, kwargs, out))

    def reset(self) -> None:
        super().reset()
        self.layers.clear()

    # -- rules
    def _record(self, kind: str, macs: float, operands: Sequence[torch.Tensor]) -> float:
        rec = self.layers.get(self._scope)
        if rec is None:
            rec = self.layers[self._scope] = LayerOps(self._scope, kind)
        rec.macs += macs
        for x in operands:  # the first binary operand drives the accumulates
            r = _binary_rate(x)
            if r is not None:
                rec.sops += r * macs
                rec.spike_elems += r * x.numel()
                rec.spike_numel += x.numel()
                rec.add_input_kind("spike")
                return macs
        if self.config.integer_inputs_as_ac:
            for x in operands:
                m = _count_mean(x)
                if m is not None:
                    rec.sops += m * macs
                    rec.add_input_kind("count")
                    return macs
        rec.mac_flops += macs
        rec.add_input_kind("real")
        return macs

    def _conv(self, args, kwargs, out):
        # weight [C_out, C_in/g, k...] (transposed: [C_in, C_out/g, k...], one MAC per input position)
        x, w, transposed = args[0], args[1], args[6]
        spatial = x.shape[2:] if transposed else out.shape[2:]
        macs = x.shape[0] * w.shape[0] * w.shape[1] * math.prod(w.shape[2:]) * math.prod(spatial)
        return self._record("conv", float(macs), [x])

    def _mm(self, args, kwargs, out):
        a, b = args[0], args[1]
        macs = float(out.numel()) * a.shape[-1]
        return self._record("linear" if self._is_linear else "matmul", macs, [a, b])

    def _addmm(self, args, kwargs, out):
        return self._mm(args[1:], kwargs, out)


# ----------------------------------------------------------------------------- firing rates
class FiringRateMonitor:
    """Mean firing rate of every spiking neuron layer, accumulated over any number of batches.

    Registers forward hooks on the spikingjelly neurons of ``model`` (no change to its forward);
    use as a context manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module):
        self.spikes: Dict[str, float] = OrderedDict()
        self.numel: Dict[str, float] = OrderedDict()
        self.kinds: Dict[str, str] = {}
        self._handles = []
        for name, m in spiking_modules(model):
            self.spikes[name], self.numel[name], self.kinds[name] = 0.0, 0.0, type(m).__name__
            self._handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def fn(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.spikes[name] += float(out.detach().float().sum().item())
            self.numel[name] += out.numel()

        return fn

    def rates(self) -> Dict[str, float]:
        """``{layer name: spikes / (neurons x T x samples)}`` of the layers that ran."""
        return OrderedDict((k, self.spikes[k] / self.numel[k]) for k in self.spikes if self.numel[k])

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# ----------------------------------------------------------------------------- Table 9 grouping
TABLE9_COLUMNS = ("embed", "mixer", "mlp", "conv")
_CLASSIFIER_NAMES = ("head", "head_lif", "classifier", "fc", "fc_lif", "linear")
_PART_PATTERNS = (
    ("embed", re.compile(r"^(\w*embed\w*|sps|stem)$", re.I)),
    ("mixer", re.compile(r"^(\w*mixer\w*|attn|attention|ssa)$", re.I)),
    ("mlp", re.compile(r"^(\w*mlp\w*|ffn)$", re.I)),
)


def table9_group(name: str) -> str:
    """Table 9 column of module ``name``: ``S<k> embed|mixer|mlp``, ``classifier`` or ``other``.

    Read from module names: a top-level ``patch_embed<k>`` / ``stage<k>`` / ``layer<k>`` (or
    ``stages.<k-1>``) gives the stage, the outermost part keyword gives the column (``*embed*`` /
    ``sps`` / ``stem``; ``mixer`` / ``attn``; ``mlp``). A top-level ``head``/``fc`` (and its neuron) is
    the classifier; a ResNet's top-level ``conv1``/``bn1`` is ``S1 embed`` and its residual blocks
    are ``S<k> conv``. Non-hierarchical models (Spikformer) put everything in stage 1.
    """
    parts = [p for p in name.split(".") if p]
    if not parts or name == "<root>":
        return "other"
    top = parts[0]
    if top in _CLASSIFIER_NAMES:
        return "classifier"
    if top in ("conv1", "bn1", "lif1", "stem_conv", "stem_bn"):
        return "S1 embed"
    stage = 1
    m = re.fullmatch(r"(?:patch_embed|stage|layer)(\d+)", top)
    if m:
        stage = int(m.group(1))
    elif top in ("stages", "layers") and len(parts) > 1 and parts[1].isdigit():
        stage = int(parts[1]) + 1
    for p in parts:
        for part, pat in _PART_PATTERNS:
            if pat.match(p):
                return f"S{stage} {part}"
    return f"S{stage} conv" if m or top in ("stages", "layers") else "other"
