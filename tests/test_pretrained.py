"""Released weights the timm way: tagged pretrained cfgs, ``pretrained=True`` from a file, the release URL
(through ``torch.hub``'s download, patched to copy a local file) and a Hugging Face hub mirror (a local hub
cache, offline). The files are written here in the released layout (older embedding names, weights under
``model`` beside a pickled ``argparse.Namespace``); nothing is downloaded.
"""
import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch

import models
from models.pretrained import RELEASE_URL, RELEASED
from models.errors import WeightsError
from tests.test_legacy_checkpoints import EMBEDS, legacy, other_family_names
from utils.tools import hub_export

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(embed_dims=32, num_heads=1, depths=(1, 1, 1))  # the 10-block layout, narrow and shallow


def released_file(path, name, **kwargs):
    """A file in the released layout for ``name`` (``NAME.TAG``, built with ``kwargs``); returns the model."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    arch = name.split(".")[0]
    if kwargs:
        family, width = arch.rsplit("_10_", 1)
        with torch.device("meta"):
            other = timm.create_model(("ms_qkformer" if family == "maxformer" else "maxformer") + f"_10_{width}",
                                      **kwargs).state_dict()
        mine = [k for k in model.state_dict() if k.startswith(EMBEDS)]
        names = dict(zip(mine, [k for k in other if k.startswith(EMBEDS)]))
    else:
        names = other_family_names(arch)
    torch.save({"model": legacy(model.state_dict(), names), "epoch": 199,
                "args": argparse.Namespace(model=arch)}, path)
    return model


def assert_same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


def test_every_released_file_has_a_tagged_cfg():
    assert timm.list_pretrained("maxformer*") == ["maxformer_10_384.t4_in1k", "maxformer_10_512.t1_in1k",
                                                  "maxformer_10_512.t4_in1k", "maxformer_10_768.t1_in1k",
                                                  "maxformer_10_768.t4_in1k"]
    assert timm.list_pretrained("ms_qkformer*") == ["ms_qkformer_10_384.t4_in1k", "ms_qkformer_10_768.t1_in1k"]
    script = (ROOT / "imagenet/checkpoints/download.sh").read_text()
    assert f'BASE_URL:-{RELEASE_URL}' in script
    files = re.search(r'^ALL="([^"]+)"', script, re.M).group(1).split()
    assert sorted(w.file for w in RELEASED) == sorted(files)
    docs = (ROOT / "docs/checkpoints.md").read_text()
    for w in RELEASED:
        cfg = timm.models.get_pretrained_cfg(w.name)
        assert cfg.url == f"{RELEASE_URL}/{w.file}.pth.tar" and cfg.T == w.T == int(w.tag[1])
        # the paper's evaluation: Resize(256) bicubic + CenterCrop(224), ImageNet mean/std
        assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, 224, 224), 0.875, "bicubic")
        assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
        assert cfg.num_classes == 1000 and cfg.license == "mit" and f"{w.top1:.2f}" in cfg.description
        assert f"| `{w.file}.pth.tar` | `{w.model}` | `{Path(w.config).stem}` | {w.top1:.2f} |" in docs
        assert (ROOT / w.config).is_file()
        assert f"T: {w.T}\n" in (ROOT / w.config).read_text()


def test_hub_organisation_names_every_mirror(monkeypatch):
    import models.pretrained as pretrained

    base = dict(timm.models.get_pretrained_cfg("ms_qkformer_10_512").to_dict(), architecture=None)
    assert pretrained.released_cfgs("maxformer_10_512", base)["maxformer_10_512.t1_in1k"].hf_hub_id is None
    monkeypatch.setattr(pretrained, "HF_HUB_ORG", "me")
    cfgs = pretrained.released_cfgs("maxformer_10_512", base)
    assert [c.hf_hub_id for c in cfgs.values()] == ["me/maxformer_10_512.t4_in1k", "me/maxformer_10_512.t1_in1k"]
    assert pretrained.released_cfgs("ms_qkformer_10_512", base)["ms_qkformer_10_512"].hf_hub_id is None


def test_a_tag_sets_T_unless_T_is_given():
    with torch.device("meta"):
        assert timm.create_model("maxformer_10_512.t1_in1k").T == 1
        assert timm.create_model("maxformer_10_512.t4_in1k").T == 4
        assert timm.create_model("ms_qkformer_10_768.t1_in1k", T=2).T == 2
        plain = timm.create_model("ms_qkformer_10_768")  # no tag, no weights: the architecture's T
    assert plain.T == 4
    model = timm.create_model("maxformer_10_768.t1_in1k", **SMALL)
    assert model.pretrained_cfg["T"] == 1 and model.pretrained_cfg["tag"] == "t1_in1k"


def test_pretrained_from_a_file_in_the_released_layout(tmp_path, caplog):
    """The real-size 10-384 model: older names converted by the cfg's filter fn, weights equal."""
    path = tmp_path / "10-384-T4.pth.tar"
    src = released_file(path, "maxformer_10_384.t4_in1k")
    torch.manual_seed(1)
    with caplog.at_level("INFO", logger="models.legacy_names"):
        model = timm.create_model("maxformer_10_384.t4_in1k", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(src, model)
    assert "patch_embed2.proj3_conv -> patch_embed2.max_embed1.embed_conv" in caplog.text
    assert model.T == 4 and model.pretrained_cfg["file"] == str(path)


def test_files_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "broken.pth.tar"
    released_file(path, "maxformer_10_768.t4_in1k", **SMALL)
    with pytest.raises(WeightsError, match=r"(?s)do not fit SpikingTransformer.*patch_embed2\.\*: the file's names"):
        timm.create_model("maxformer_10_768.t4_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **dict(SMALL, embed_dims=64))  # other widths: shapes differ
    sd = torch.load(path, weights_only=False)
    del sd["model"]["stage3.0.mlp.fc1_conv.weight"]
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing \(1\): stage3.0.mlp.fc1_conv.weight"):
        timm.create_model("maxformer_10_768.t4_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **SMALL)
    with pytest.raises(WeightsError, match="weights file not found"):
        timm.create_model("maxformer_10_768", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "x")))


def test_pretrained_true_downloads_the_release_url_through_torch_hub(tmp_path, monkeypatch):
    local = tmp_path / "local.pth.tar"
    src = released_file(local, "maxformer_10_768.t1_in1k", **SMALL)
    fetched = []

    def download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        shutil.copyfile(local, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    model = timm.create_model("maxformer_10_768.t1_in1k", pretrained=True, **SMALL)
    assert fetched == [f"{RELEASE_URL}/10-768-T1.pth.tar"]
    assert (tmp_path / "hub/checkpoints/10-768-T1.pth.tar").is_file()  # torch.hub's cache
    assert model.T == 1
    assert_same_weights(src, model)
    # fine-tuning: a new classifier when num_classes differs, everything else loaded (from torch.hub's cache)
    tuned = timm.create_model("maxformer_10_768.t1_in1k", pretrained=True, num_classes=10, **SMALL)
    assert len(fetched) == 1
    assert tuned.get_classifier().weight.shape == (10, 32) and tuned.pretrained_cfg["num_classes"] == 10
    assert_same_weights(src, tuned, skip=("head.",))


def test_pretrained_offline_names_the_routes_without_network(tmp_path, monkeypatch):
    import urllib.error

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(models.ModelError, match=r"cannot fetch the pretrained weights from .*10-384-T4\.pth\.tar "
                       r".*'bash imagenet/checkpoints/download.sh 10-384-T4'.*"
                       r"pretrained_cfg_overlay=dict\(file='imagenet/checkpoints/10-384-T4.pth.tar'\)"):
        timm.create_model("maxformer_10_384.t4_in1k", pretrained=True, **SMALL)


def test_local_files_that_are_not_weights_are_named(tmp_path):
    """A text file, a truncated file and another model's safetensors: one clear WeightsError each."""
    from safetensors.torch import save_file

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    good = tmp_path / "own.pth.tar"
    torch.save({"state_dict": timm.create_model("maxformer_cifar", **SMALL).state_dict()}, good)
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(good.read_bytes()[:5000])
    other = tmp_path / "other.safetensors"
    save_file(timm.create_model("maxformer_cifar", **dict(SMALL, embed_dims=64)).state_dict(), str(other))
    for path, message in ((text, "is not a PyTorch checkpoint: it is a text file"), (cut, "is truncated"),
                          (other, r"do not fit SpikingTransformer.*\n  other shape \(\d+\): ")):
        with pytest.raises(WeightsError, match=message) as info:
            timm.create_model("maxformer_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
        assert len(str(info.value).splitlines()) < 12


def test_own_checkpoints_bring_their_model_kwargs(tmp_path, capsys):
    """A checkpoint train.py wrote records its model kwargs: loading or converting it needs none repeated."""
    from utils.training.checkpoint import main as checkpoint_main

    kwargs = dict(embed_dims=32, num_heads=1)
    trained = timm.create_model("maxformer_cifar", T=2, num_classes=7, **kwargs)
    path = tmp_path / "last.pth.tar"
    torch.save({"arch": "maxformer_cifar", "epoch": 0, "state_dict": trained.state_dict(),
                "config": {"model": "maxformer_cifar", "model_kwargs": kwargs, "T": 2, "num_classes": None}}, path)
    model = timm.create_model("maxformer_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert (model.T, model.num_classes, model.dims[-1]) == (2, 7, 32)
    assert_same_weights(trained, model)
    assert checkpoint_main(["convert", str(path), str(tmp_path / "out.pth.tar")]) == 0
    assert "wrote" in capsys.readouterr().out


def hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as the Hugging Face hub cache holds a downloaded repository (one snapshot, ``refs/main``)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(folder, root / "snapshots" / revision)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)


def test_hub_export_and_loading_from_the_hub_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    name = "maxformer_10_768.t1_in1k"
    src = released_file(tmp_path / "10-768-T1.pth.tar", name, **SMALL)
    out = tmp_path / "export"
    hub_export.export(name, tmp_path / "10-768-T1.pth.tar", str(out), SMALL, repo_id=f"me/{name}")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (out / "README.md").read_text()
    assert "license: mit" in card and "78.60" in card and f"hf-hub:me/{name}" in card
    assert "@inproceedings{fang2025spiking" in card and f"{RELEASE_URL}/10-768-T1.pth.tar" in card
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "maxformer_10_768" and config["model_args"]["T"] == 1
    assert config["pretrained_cfg"]["top1"] == 78.60 and "url" not in config["pretrained_cfg"]

    cache = tmp_path / "hf"
    hub_cache(cache, f"me/{name}", out)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("the URL was used"))
    mirrored = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=f"me/{name}"),
                                 cache_dir=cache, **SMALL)
    assert_same_weights(src, mirrored)
    from_hub = timm.create_model(f"hf-hub:me/{name}", pretrained=True, cache_dir=cache)
    assert from_hub.T == 1 and from_hub.pretrained_cfg["source"] == "hf-hub"
    assert_same_weights(src, from_hub)


def test_hub_export_command_errors(tmp_path, capsys):
    assert hub_export.main(["maxformer_cifar.t4_in1k", "x.pth.tar", str(tmp_path)]) == 2
    assert "not a released weights name; one of: maxformer_10_384.t4_in1k" in capsys.readouterr().err
    assert hub_export.main(["maxformer_10_384.t4_in1k", str(tmp_path / "x.pth.tar"), str(tmp_path / "out")]) == 2
    assert "weights file not found" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ validate.py / train.py --pretrained
@pytest.fixture
def serve(tmp_path, monkeypatch):
    """``serve(NAME.TAG, **kwargs)``: a released-layout file that torch.hub's download of the tag's URL copies."""
    files = {}

    def download(url, dst, hash_prefix=None, progress=True):
        shutil.copyfile(files[url], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def add(name, **kwargs):
        path = tmp_path / f"{name}.pth.tar"
        model = released_file(path, name, **kwargs)
        files[timm.models.get_pretrained_cfg(name).url] = path
        return model

    return add


@pytest.fixture
def digits_without_T(tmp_path):
    """The digits demo config with T left at its default (so a tag's T applies)."""
    text = (ROOT / "demo/digits.yaml").read_text()
    assert "\nT: 2\n" in text
    path = tmp_path / "digits.yaml"
    path.write_text(text.replace("\nT: 2\n", "\n"))
    return str(path)


def _recording(monkeypatch, module, name):
    """Wrap ``module.name`` so that the model it receives (or returns) is kept, with its weights at that moment."""
    seen = {}
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        model = out if name == "build_model" else args[0]
        seen.setdefault("state", {k: v.clone() for k, v in model.state_dict().items()})
        seen.setdefault("T", model.T)
        return out

    monkeypatch.setattr(module, name, wrapper)
    return seen


@pytest.mark.usefixtures("one_thread")
def test_validate_and_train_with_pretrained(tmp_path, serve, digits_without_T, monkeypatch, capsys):
    import train
    import utils.training.run_setup
    import validate

    name = "maxformer_10_768.t1_in1k"
    src = serve(name, **SMALL)  # digits.yaml has embed_dims 32, num_heads 1
    common = ["-c", digits_without_T, "--model", name, "--model-kwargs", "depths=[1,1,1]", "--progress", "false",
              "--workers", "0", "--fastpath", "false", "--max-eval-batches", "1", "--batch-size", "16"]
    # validate: the released classifier has 1000 classes, digits 10
    assert validate.main(common + ["--pretrained"]) == 2
    assert "its classifier has 1000 classes but digits is evaluated with 10" in capsys.readouterr().err
    seen = _recording(monkeypatch, validate, "evaluate")
    out = tmp_path / "r.json"
    assert validate.main(common + ["--pretrained", "--num-classes", "1000", "--results-file", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["T"] == 1 and seen["T"] == 1 and res["checkpoint"] == f"pretrained:{name}"
    assert all(torch.equal(v, seen["state"][k]) for k, v in src.state_dict().items())
    # train: fine-tuning on digits, a new 10-class head, everything else from the weights
    seen = _recording(monkeypatch, utils.training.run_setup, "build_model")
    assert train.main(common + ["--pretrained", "--epochs", "1", "--max-train-batches", "1",
                                "--output", str(tmp_path), "--experiment", "ft"]) == 0
    assert seen["T"] == 1 and seen["state"]["head.weight"].shape == (10, 32)
    assert all(torch.equal(v, seen["state"][k]) for k, v in src.state_dict().items() if not k.startswith("head."))


def test_license_and_citation():
    """The cfgs say MIT and there is an MIT LICENSE; the README cites the paper as the model cards do."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the Max-Former repository authors" in text
    assert {timm.models.get_pretrained_cfg(n).license for n in models.list_our_models()} == {"mit"}
    readme = (ROOT / "README.md").read_text()
    assert f"```bibtex\n{hub_export.CITATION}\n```" in readme
    assert "timm.create_model('maxformer_10_768.t4_in1k', pretrained=True)" in readme
