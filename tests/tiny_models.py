"""A tiny BatchNorm-free spiking classifier for engine tests (registered with timm on import).

BatchNorm statistics depend on the per-process batch, and SyncBatchNorm needs CUDA, so the CPU DDP
equality test uses this model: conv -> LIF -> conv -> mean -> linear, averaged over T.
"""
import torch.nn as nn
from timm.models import register_model

from models import NeuronConfig


class TinySpikingNet(nn.Module):
    def __init__(self, num_classes=10, T=1, in_channels=3, width=8):
        super().__init__()
        self.T, self.num_classes = T, num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, 2, 1)
        self.lif1 = NeuronConfig().make(v_threshold=0.5)
        self.conv2 = nn.Conv2d(width, width, 3, 2, 1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [T, B, C, H, W]
        t, b = x.shape[:2]
        x = self.lif1(self.conv1(x.flatten(0, 1)).unflatten(0, (t, b)))
        x = self.conv2(x.flatten(0, 1)).unflatten(0, (t, b))
        return self.head(x.mean((3, 4))).mean(0)


@register_model
def tiny_spiking_test(pretrained=False, **kwargs):
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return TinySpikingNet(**kwargs)
