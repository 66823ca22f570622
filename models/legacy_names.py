"""Older parameter names: which ones files may carry, and their conversion to this repository's names.

* :data:`LEGACY_NAMES` — per module class, the older sub-module names and the current ones;
* :func:`convert_state_dict` — a state dict with older names renamed for a model (table, then a checked
  positional alignment), or a listing of what could not be matched;
* :func:`filter_pretrained_state_dict` — the same as timm's ``pretrained_filter_fn`` of the released cfgs
  (``models.pretrained``), so ``timm.create_model(..., pretrained=True)`` loads the authors' files.

``utils.training.checkpoint.load_checkpoint`` uses this module for files loaded by path.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mixer_hub import SSADWC

from .embeddings import EmbedMax, EmbedOrigImageNet, EmbedOrigLater, PatchEmbeddingStage, PatchEmbedInit

__all__ = ["RenameTable", "LEGACY_NAMES", "STATE_DICT_KEYS", "WRAPPER_PREFIXES", "find_state_dict", "top_module",
           "strip_wrapper_prefixes", "convert_state_dict", "filter_pretrained_state_dict"]

_logger = logging.getLogger(__name__)

# Wrapper prefixes added by DDP and torch.compile; removed by name, never by position.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Entries of a checkpoint dict that may hold the weights, in the order they are looked for.
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


# ------------------------------------------------------------------ the rename tables
@dataclasses.dataclass(frozen=True)
class RenameTable:
    """Older sub-module names of every module of class ``module_class``, mapped to the current ones.

    ``names`` maps a module path relative to such a module (``proj3_conv``) to ours
    (``max_embed1.embed_conv``); a path also renames everything below it. ``source`` says where the
    older names come from (printed when a file is converted).
    """

    source: str
    module_class: type
    names: Mapping[str, str]


def _legacy_tables() -> Tuple[RenameTable, ...]:
    qkformer_era = "QKFormer-era embedding names"
    maxformer_hub = "Max-Former embedding-hub names"
    earlier = "this repository's earlier names"
    # Max-Former ImageNet: the released files most likely carry the names of the MS-QKFormer embeddings
    # with the same shapes in the same order (PatchEmbedInit for stage 1, PatchEmbeddingStage for 2 and 3).
    init_names = {"proj_conv": "embed1.embed_conv", "proj_bn": "embed1.embed_bn",
                  "proj_conv1": "embed2.embed_conv", "proj_bn1": "embed2.embed_bn",
                  "proj_conv2": "embed3.embed_conv", "proj_bn2": "embed3.embed_bn",
                  "rpe_conv": "embed4.embed_conv", "rpe_bn": "embed4.embed_bn"}
    stage_names = {"proj3_conv": "max_embed1.embed_conv", "proj3_bn": "max_embed1.embed_bn",
                   "proj4_conv": "embed1.embed_conv", "proj4_bn": "embed1.embed_bn",
                   "proj_res_conv": "max_embed2.embed_conv", "proj_res_bn": "max_embed2.embed_bn"}
    return (
        RenameTable(qkformer_era, EmbedOrigImageNet, init_names),
        RenameTable(qkformer_era, EmbedMax, stage_names),
        # MS-QKFormer ImageNet: the same correspondence read the other way (Max-Former hub names).
        RenameTable(maxformer_hub, PatchEmbedInit, {v: k for k, v in init_names.items()}),
        RenameTable(maxformer_hub, PatchEmbeddingStage, {v: k for k, v in stage_names.items()}),
        # Files written by this repository before it adopted the published names.
        RenameTable(earlier, EmbedOrigLater, {"embed2": "orig_embed1", "embed3": "embed2"}),
        RenameTable(earlier, SSADWC, {"dwc.conv": "dwc", "dwc.conv_bn": "dwc_bn"}),
    )


LEGACY_NAMES: Tuple[RenameTable, ...] = _legacy_tables()


# ------------------------------------------------------------------ conversion
def find_state_dict(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights inside a checkpoint dict: the first of :data:`STATE_DICT_KEYS` that holds a mapping, else ``obj``."""
    for k in STATE_DICT_KEYS:
        if isinstance(obj.get(k), Mapping):
            return obj[k]
    return obj


def strip_wrapper_prefixes(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``sd`` without the ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes, removed by name."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# ------------------------------------------------------------------ older names -> ours
def top_module(key: str) -> str:
    """The top-level module a key belongs to (``patch_embed2``, ``stage3``, ``head``); '' for root tensors."""
    return key.split(".", 1)[0] if "." in key else ""


def _kind(key: str) -> str:
    """``weight`` / ``bias`` / ``running_mean`` / ``running_var`` / ``num_batches_tracked`` ..."""
    return key.rsplit(".", 1)[-1]


def _table_names(model: nn.Module, keys: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """``{file key: (current key, source)}`` for the keys that :data:`LEGACY_NAMES` renames."""
    owners = [(path, table) for path, m in model.named_modules() for table in LEGACY_NAMES
              if type(m) is table.module_class]
    owners.sort(key=lambda o: -len(o[0]))
    out = {}
    for key in keys:
        for path, table in owners:
            head = path + "." if path else ""
            if not key.startswith(head):
                continue
            rel, _, param = key[len(head):].rpartition(".")
            for old in sorted(table.names, key=len, reverse=True):
                if rel == old or rel.startswith(old + "."):
                    out[key] = (f"{head}{table.names[old]}{rel[len(old):]}.{param}", table.source)
                    break
            break  # the innermost owner decides
    return out


def _shape(t: Optional[torch.Tensor]) -> str:
    return "-" if t is None else str(tuple(t.shape))


def _listing(unit: str, file_keys: List[str], model_keys: List[str], sd, own, table, reason: str) -> str:
    """Each file key of ``unit`` with the current name it would take, and the model keys left without one."""
    lines = [f"  {unit or '(root)'}.*: the file's names differ from the model's and no verified correspondence "
             f"exists ({reason}). Each tensor, file name -> current name:"]
    taken = set()
    for i, f in enumerate(file_keys):
        cur = table[f][0] if f in table else (f if f in own else (model_keys[i] if i < len(model_keys) else None))
        note = ""
        if cur is None:
            note = "  <- no tensor of the model left for it"
        elif cur not in own:
            note = "  <- not in the model"
        elif sd[f].shape != own[cur].shape:
            note = f"  <- shape {_shape(sd[f])} vs {_shape(own[cur])}"
        elif _kind(f) != _kind(cur):
            note = f"  <- {_kind(f)} vs {_kind(cur)}"
        taken.add(cur)
        lines.append(f"    {f} {_shape(sd[f])} -> {cur or '?'}{note}")
    for o in model_keys:
        if o not in taken:
            lines.append(f"    (missing in the file) -> {o} {_shape(own[o])}")
    return "\n".join(lines)


def convert_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]
                       ) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str, str]], Dict[str, str]]:
    """Rename the tensors of a file with older parameter names to ``model``'s names.

    Works per top-level module (``patch_embed2``, ``stage3``...). A module whose names already
    fit, or that only lacks or adds tensors, is left alone (a plain mismatch, reported by
    :func:`load_checkpoint`). Where the file's names and the model's differ on both sides:

    * the rename table (:data:`LEGACY_NAMES`, per module class) gives the names it knows;
    * a positional alignment, the way the authors' test script loads by state-dict order, but
      checked: the module's tensor count, and at every position the shape and the kind of entry
      (weight / bias / running_mean / running_var / num_batches_tracked) must agree, and it must
      agree with the table and with every name the file shares with the model.

    Returns ``(state_dict, renames, refusals)``: ``renames`` lists ``(file module, current module,
    how)`` once per module, ``refusals`` ``{top-level module: listing}`` for those that could not be matched.
    """
    own = model.state_dict()
    sd = dict(sd)
    if sd.keys() == own.keys():
        return sd, [], {}
    file_units: Dict[str, List[str]] = {}
    for k in sd:
        file_units.setdefault(top_module(k), []).append(k)
    model_units: Dict[str, List[str]] = {}
    for k in own:
        model_units.setdefault(top_module(k), []).append(k)
    table = _table_names(model, list(sd))
    mapping: Dict[str, str] = {}
    renames: List[Tuple[str, str, str]] = []
    refusals: Dict[str, str] = {}
    for unit, fkeys in file_units.items():
        okeys = model_units.get(unit, [])
        fset, oset = set(fkeys), set(okeys)
        if not okeys or not (fset - oset) or not (oset - fset):
            continue
        reason = None
        if len(fkeys) != len(okeys):
            reason = f"{len(fkeys)} tensors in the file, {len(okeys)} in the model"
        else:
            for i, (f, o) in enumerate(zip(fkeys, okeys)):
                want = table[f][0] if f in table else (f if f in own else o)
                if sd[f].shape != own[o].shape or _kind(f) != _kind(o):
                    reason = (f"position {i}: {f} {_shape(sd[f])} cannot be {o} {_shape(own[o])}")
                    break
                if want != o:
                    reason = f"position {i}: {f} is named {want} but sits where the model has {o}"
                    break
        if reason:
            refusals[unit] = _listing(unit, fkeys, okeys, sd, own, table, reason)
            continue
        seen = set()
        for f, o in zip(fkeys, okeys):
            mapping[f] = o
            how = f"table: {table[f][1]}" if f in table else "alignment: same order, shapes and kinds"
            entry = (f.rpartition(".")[0], o.rpartition(".")[0], how)
            if f != o and entry not in seen:
                seen.add(entry)
                renames.append(entry)
    return {mapping.get(k, k): v for k, v in sd.items()}, renames, refusals




def filter_pretrained_state_dict(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: the weights of a downloaded or local file under ``model``'s names.

    Takes what ``timm.models.load_pretrained`` read (a whole checkpoint dict, as ``torch.hub`` returns
    for a URL, or its weights) and returns the tensors with wrapper prefixes removed, the model's
    ``filter_reference_state_dict`` applied and older names converted (:func:`convert_state_dict`).
    Raises ``RuntimeError`` with the listing when the file does not fit the model; the classifier is left
    to timm, which drops it when ``num_classes`` differs from the cfg's.
    """
    sd = strip_wrapper_prefixes({k: v for k, v in find_state_dict(state_dict).items() if isinstance(v, torch.Tensor)})
    hook = getattr(model, "filter_reference_state_dict", None)
    if callable(hook):
        sd = hook(sd)
    sd, renames, refusals = convert_state_dict(model, sd)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    own = model.state_dict()

    def listed(keys: List[str]) -> List[str]:
        return [k for k in keys if not k.startswith(classifier + ".") and top_module(k) not in refusals]

    missing, unexpected = listed([k for k in own if k not in sd]), listed([k for k in sd if k not in own])
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv") or ()
    first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
    mismatched = [f"{k} {list(sd[k].shape)} in the file, {list(own[k].shape)} in the model"
                  for k in listed([k for k in own if k in sd and sd[k].shape != own[k].shape])
                  if not (k.rpartition(".")[0] in first_conv and sd[k].shape[:1] + sd[k].shape[2:] ==
                          own[k].shape[:1] + own[k].shape[2:])]  # other input channels: timm adapts the stem
    if refusals or missing or unexpected or mismatched:
        lines = [f"pretrained weights do not fit {type(model).__name__} ({len(own)} tensors in the model, "
                 f"{len(sd)} in the file):", *refusals.values()]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {'; '.join(keys[:5])}" + (" ..." if len(keys) > 5 else ""))
        lines.append("Create the model with the architecture kwargs the weights were trained with (model name, "
                     "embed_dims, depths, ...).")
        raise RuntimeError("\n".join(lines))
    for old, new, how in renames:
        _logger.info(f"pretrained weights: {old} -> {new}  ({how})")
    return sd
