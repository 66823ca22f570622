"""Grad-CAM of a spiking network: class-activation maps of one module's output, averaged over time steps."""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.neurons import reset_net

__all__ = ["grad_cam", "last_block"]


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str, target: Optional[int] = None) -> torch.Tensor:
    """Grad-CAM of module ``layer`` (a ``[T,B,C,H,W]`` or ``[B,C,H,W]`` output) -> ``[B,H_img,W_img]`` in [0,1].

    Channel weights are the gradients of the target logit (default: the predicted class)
    averaged over space and time; the map is ``ReLU(sum_c w_c A_c)`` averaged over time steps.
    """
    mod = dict(model.named_modules()).get(layer)
    if mod is None:
        raise LookupError(f"model has no module {layer!r}")
    store = {}

    def hook(m, i, o):
        o = o[0] if isinstance(o, (tuple, list)) else o
        o.retain_grad()
        store["a"] = o

    h = mod.register_forward_hook(hook)
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(images.requires_grad_(True))
            if target is not None and target >= logits.shape[1]:
                raise LookupError(f"target class {target} is out of range: the model has {logits.shape[1]} classes")
            idx = logits.argmax(1) if target is None else torch.full((logits.shape[0],), target)
            logits.gather(1, idx[:, None]).sum().backward()
    finally:
        h.remove()
        reset_net(model)
    a, g = store["a"], store["a"].grad
    if a.dim() == 4:
        a, g = a[None], g[None]
    w = g.mean((0, 3, 4), keepdim=True)  # [1,B,C,1,1]
    cam = F.relu((w * a).sum(2)).mean(0)  # [B,H,W]
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.flatten(1).min(1)[0][:, None, None]
    return (cam / cam.flatten(1).max(1)[0].clamp_min(1e-12)[:, None, None]).detach()


def last_block(model: nn.Module, block_pattern: str) -> str:
    """The name of the last module of ``model`` matching ``block_pattern`` (the default Grad-CAM layer)."""
    names = [n for n, _ in model.named_modules() if re.match(block_pattern, n)]
    if not names:
        raise LookupError("cannot find the last block; pass --layer NAME")
    return names[-1]
