"""The authors' released ImageNet weights as timm pretrained cfgs (``NAME.TAG``).

``timm.create_model('maxformer_10_768.t4_in1k', pretrained=True)`` downloads the released file (GitHub
release "checkpoints" of bic-L/MaxFormer, cached by ``torch.hub``), converts its older parameter names
(:func:`models.legacy_names.filter_pretrained_state_dict`, the cfgs' ``pretrained_filter_fn``) and loads
it strictly. Each cfg carries the release URL, the paper's evaluation settings (224 px, crop 0.875,
bicubic, ImageNet mean/std, and ``T``) and the paper's top-1 (``top1``, Table 3).

A tag's ``T`` is the model's ``T`` whenever the tag is named or ``pretrained=True`` (an explicit ``T=``
kwarg still wins). ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local copy instead, and
``pretrained_cfg_overlay=dict(hf_hub_id='ORG/maxformer_10_768.t4_in1k')`` a Hugging Face hub mirror
written by ``python -m utils.tools.hub_export`` (docs/checkpoints.md). A local file is read by
:func:`models.weights.read_weights` (a checkpoint train.py wrote also brings its model kwargs); a file that is not
weights, is truncated or does not fit, and weights that cannot be fetched (offline), raise
:class:`models.errors.WeightsError` naming the fix. Setting :data:`HF_HUB_ORG` makes every
cfg point at ``<HF_HUB_ORG>/<name>.<tag>`` (timm then prefers the hub to the URL).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from timm.models import PretrainedCfg

__all__ = ["SpikingPretrainedCfg", "ReleasedWeights", "RELEASED", "RELEASE_URL", "HF_HUB_ORG", "released_cfgs",
           "as_pretrained_cfg"]

RELEASE_URL = "https://github.com/bic-L/MaxFormer/releases/download/checkpoints"
ORIGIN_URL = "https://github.com/bic-L/MaxFormer"
PAPER_NAME = "Spiking Neural Networks Need High-Frequency Information"
PAPER_ID = "arXiv:2505.18608"
# Hugging Face hub organisation (or user) holding mirrors named ``<name>.<tag>``; None until mirrored.
HF_HUB_ORG: Optional[str] = None


@dataclasses.dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus what spiking weights need: ``T`` and the paper's top-1."""

    T: Optional[int] = None  # time steps the weights were trained and evaluated with
    top1: Optional[float] = None  # paper's ImageNet-1K validation top-1 (%)


@dataclasses.dataclass(frozen=True)
class ReleasedWeights:
    """One released file: our model, its tag, the file's name in the release, ``T`` and the paper's top-1."""

    model: str
    tag: str
    file: str
    T: int
    top1: float

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def url(self) -> str:
        return f"{RELEASE_URL}/{self.file}.pth.tar"

    @property
    def config(self) -> str:
        """The training / evaluation config of the run (``imagenet/*.yaml``)."""
        return f"imagenet/{self.model.replace('maxformer_', '')}_t{self.T}.yaml"


# The seven files of the release (imagenet/checkpoints/download.sh); per model the T=4 weights come first
# (timm's default tag for the model name without a tag).
RELEASED: Tuple[ReleasedWeights, ...] = (
    ReleasedWeights("maxformer_10_384", "t4_in1k", "10-384-T4", 4, 77.82),
    ReleasedWeights("maxformer_10_512", "t4_in1k", "10-512-T4", 4, 79.86),
    ReleasedWeights("maxformer_10_512", "t1_in1k", "10-512-T1", 1, 75.47),
    ReleasedWeights("maxformer_10_768", "t4_in1k", "10-768-T4", 4, 82.39),
    ReleasedWeights("maxformer_10_768", "t1_in1k", "10-768-T1", 1, 78.60),
    ReleasedWeights("ms_qkformer_10_384", "t4_in1k", "ms_qk_10-384_T4", 4, 76.48),
    ReleasedWeights("ms_qkformer_10_768", "t1_in1k", "ms_qk_10-768_T1", 1, 77.78),
)


def released_cfgs(model: str, base: dict) -> Dict[str, SpikingPretrainedCfg]:
    """``{'<model>.<tag>': cfg}`` for every released file of ``model`` (``base``: the variant's data cfg);
    ``{model: base}`` (no weights) if none was released."""
    out: Dict[str, SpikingPretrainedCfg] = {}
    for w in RELEASED:
        if w.model == model:
            family = "MS-QKFormer" if model.startswith("ms_qkformer") else "Max-Former"
            out[w.name] = SpikingPretrainedCfg(
                **base, url=w.url, hf_hub_id=f"{HF_HUB_ORG}/{w.name}" if HF_HUB_ORG else None, T=w.T, top1=w.top1,
                description=f"{family}-10-{model.rsplit('_10_', 1)[1]}, T={w.T}, trained on ImageNet-1K "
                            f"by the paper's authors; top-1 {w.top1:.2f} % (paper Table 3)",
                origin_url=ORIGIN_URL, paper_name=PAPER_NAME, paper_ids=PAPER_ID)
    return out or {model: SpikingPretrainedCfg(**base)}


def as_pretrained_cfg(cfg):
    """A ``pretrained_cfg`` argument as timm's builder takes it: dicts (e.g. from a hub ``config.json``,
    which may carry ``T`` / ``top1``) become :class:`SpikingPretrainedCfg`; tags and cfg objects pass."""
    if isinstance(cfg, dict):
        fields = {f.name for f in dataclasses.fields(SpikingPretrainedCfg)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"pretrained_cfg has unknown entries {unknown}; known: {sorted(fields)}")
        return SpikingPretrainedCfg(**cfg)
    return cfg
