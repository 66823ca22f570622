"""Write a Hugging Face hub mirror of released weights: model card, ``config.json``, ``model.safetensors``.

    python -m utils.tools.hub_export maxformer_10_768.t4_in1k imagenet/checkpoints/10-768-T4.pth.tar hub/10-768-T4

The folder gets ``README.md`` (the model card), ``config.json`` and ``model.safetensors``.

The weights are loaded as ``timm.create_model(NAME.TAG, pretrained=True)`` does (older names converted,
checked strictly) and written under the current names in timm's hub layout, so that after uploading
the folder (docs/checkpoints.md) ``timm.create_model('hf-hub:ORG/NAME.TAG', pretrained=True)`` and
``pretrained_cfg_overlay=dict(hf_hub_id='ORG/NAME.TAG')`` load them. Nothing is uploaded here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

from utils.config.cli import Parser
from utils.io.outputs import check_outputs

__all__ = ["CITATION", "export", "model_card"]

CITATION = """@inproceedings{fang2025spiking,
  title     = {Spiking Neural Networks Need High-Frequency Information},
  author    = {Fang, Yuetong and Zhou, Deming and Wang, Ziqing and Ren, Hongwei and Zeng, Zecui and
               Li, Lusong and Zhou, Shibo and Xu, Renjing},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2025},
  eprint    = {2505.18608},
  archivePrefix = {arXiv}
}"""


def model_card(name: str, cfg: Dict[str, Any], params: int, repo_id: str = "") -> str:
    """The hub ``README.md`` of ``name`` (``NAME.TAG``) from its pretrained cfg and parameter count;
    ``repo_id``: where it will be uploaded (default ``ORG/NAME.TAG``)."""
    crop = cfg["input_size"][-1]
    resize = int(crop / cfg["crop_pct"])
    lines = [
        "---",
        "tags:", "- image-classification", "- timm", "- spiking-neural-network",
        "library_name: timm",
        f"license: {cfg.get('license') or 'mit'}",
        "datasets:", "- imagenet-1k",
        "pipeline_tag: image-classification",
        "---",
        f"# Model card for {name}",
        "",
        f"{cfg.get('description') or name}.",
        "",
        "## Model details",
        f"- **Architecture:** `{cfg['architecture']}` (spiking transformer, T={cfg.get('T')} time steps)",
        f"- **Parameters (M):** {params / 1e6:.2f}",
        f"- **ImageNet-1K top-1 (%):** {cfg['top1']:.2f} (paper, Table 3)",
        f"- **Evaluation:** resize {resize} ({cfg['interpolation']}), center crop {crop}, mean {tuple(cfg['mean'])}, "
        f"std {tuple(cfg['std'])}",
        f"- **Paper:** {cfg.get('paper_name')} ({cfg.get('paper_ids')})",
        f"- **Original weights:** {cfg.get('url') or cfg.get('origin_url')}",
        "",
        "## Usage",
        "The model code is not part of timm: run from a checkout of the Max-Former repository (`import models` "
        "registers the architectures).",
        "```python",
        "import timm, models  # noqa: F401  (registers the Max-Former models)",
        f"model = timm.create_model('hf-hub:{repo_id or 'ORG/' + name}', pretrained=True).eval()",
        "cfg = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**cfg, is_training=False)",
        "```",
        "",
        "## Citation",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


EXPORT_FILES = ("README.md", "config.json", "model.safetensors")


def _previous_export(out_dir: str) -> bool:
    """True when ``out_dir`` holds an earlier export: its card and timm config are the ones :func:`export` writes."""
    try:
        with open(os.path.join(out_dir, "README.md")) as f:
            card = f.read()
        with open(os.path.join(out_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return ("# Model card for " in card and CITATION in card and isinstance(config, dict)
            and "pretrained_cfg" in config and "architecture" in config)


def export(name: str, file: str, out_dir: str, model_kwargs: Optional[Dict[str, Any]] = None,
           repo_id: str = "", overwrite: bool = False) -> str:
    """Write ``out_dir`` (``README.md``, ``config.json``, ``model.safetensors``) for released weights ``name``
    read from ``file``; ``repo_id`` (``ORG/NAME.TAG``) appears in the card's usage example. Files of those names
    that an earlier export did not write are refused (:class:`~utils.errors.ConfigError`) unless ``overwrite``."""
    import timm  # lazy: -h runs without torch, timm and models (2.5 s)
    from timm.models import save_for_hf

    from models import build_model

    previous = _previous_export(out_dir)
    check_outputs({f"OUTDIR's {n}": os.path.join(out_dir, n) for n in EXPORT_FILES}, overwrite, inputs=(file,),
                  ours=lambda _: previous)

    model = build_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=os.fspath(file)),
                        **dict(model_kwargs or {}))
    save_for_hf(model, out_dir, model_args=dict(T=model.T), safe_serialization=True)
    card = model_card(name, {**model.pretrained_cfg, "url": timm.models.get_pretrained_cfg(name).url},
                      sum(p.numel() for p in model.parameters()), repo_id)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    """``python -m utils.tools.hub_export NAME.TAG FILE OUTDIR``."""
    parser = Parser(prog="python -m utils.tools.hub_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", metavar="NAME.TAG", help="released weights, e.g. maxformer_10_768.t4_in1k "
                                                         "(timm.list_pretrained('maxformer*'))")
    parser.add_argument("file", metavar="FILE", help="the released file, e.g. imagenet/checkpoints/10-768-T4.pth.tar")
    parser.add_argument("out_dir", metavar="OUTDIR", help="folder to write (created)")
    parser.add_bool("--overwrite", help="replace README.md, config.json or model.safetensors in OUTDIR that an "
                                        "earlier export did not write")
    parser.add_argument("--repo-id", default="", help="hub repository it will be uploaded to, e.g. ORG/NAME.TAG "
                                                      "(shown in the card's usage example)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from models.pretrained import RELEASED  # lazy: see export

    released = [w.name for w in RELEASED]
    if args.name not in released:
        print(f"error: {args.name!r} is not a released weights name; one of: {', '.join(released)}", file=sys.stderr)
        return 2
    try:
        export(args.name, args.file, args.out_dir, repo_id=args.repo_id, overwrite=args.overwrite)
    except (FileNotFoundError, RuntimeError, ValueError) as err:  # ValueError: ConfigError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: README.md, config.json, model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
