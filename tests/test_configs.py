"""Every shipped YAML parses, resolves, and builds its model (on the meta device: no memory, no forward)."""
import glob
import os
import re

import pytest
import torch

from utils.training.engine import build_model
from utils.config import parse_config
from utils.data import dataset_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "demo", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "cifar10-100", "**", "*.yaml"), recursive=True)
    + glob.glob(os.path.join(ROOT, "event", "**", "*.yaml"), recursive=True)
    + glob.glob(os.path.join(ROOT, "imagenet", "*.yaml"))
)
# Paper parameter counts (M) for the published configs.
PAPER_PARAMS = {"cifar10.yaml": 6.57, "cifar100.yaml": 6.60, "cifar10dvs.yaml": 1.45, "dvsgesture.yaml": 1.45,
                "10_384_t4.yaml": 16.23, "10_512_t1.yaml": 28.65, "10_512_t4.yaml": 28.65, "10_768_t1.yaml": 63.99,
                "10_768_t4.yaml": 63.99, "ms_qkformer_10_384_t4.yaml": 16.47, "ms_qkformer_10_768_t1.yaml": 64.96}


def _rel(path):
    return os.path.relpath(path, ROOT)


def test_expected_config_set_is_shipped():
    names = {_rel(p) for p in CONFIGS}
    for need in ["demo/digits.yaml", "cifar10-100/cifar10.yaml", "cifar10-100/cifar100.yaml", "event/cifar10dvs.yaml",
                 "event/dvsgesture.yaml", "imagenet/10_384_t4.yaml", "imagenet/10_512_t1.yaml",
                 "imagenet/10_512_t4.yaml", "imagenet/10_768_t1.yaml", "imagenet/10_768_t4.yaml",
                 "imagenet/ms_qkformer_10_384_t4.yaml", "imagenet/ms_qkformer_10_768_t1.yaml"]:
        assert need in names, need
    assert len([n for n in names if n.startswith("cifar10-100/ablations/")]) == 29
    assert len([n for n in names if n.startswith("event/ablations/")]) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_parses_and_builds_its_model(path):
    cfg = parse_config(["-c", path])
    info = dataset_info(cfg.dataset)
    num_classes = cfg.num_classes or info["num_classes"]
    assert num_classes == info["num_classes"]
    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    assert model.T == cfg.T
    params = sum(p.numel() for p in model.parameters()) / 1e6
    name = os.path.basename(path)
    if name in PAPER_PARAMS:
        assert params == pytest.approx(PAPER_PARAMS[name], abs=0.01), (name, params)
    if "ablations" in path:  # every ablation states the paper's accuracy and builds the row it names
        text = open(path).read()
        assert re.search(r"Paper Table [47].*: \d+\.\d+ % top-1", text), path
        for key in ("embeds", "mixers"):
            assert key in cfg.model_kwargs
