"""Older parameter names: the authors' released ImageNet files and this repository's earlier names.

The released files cannot be downloaded here; their layouts are rebuilt from our own state dicts (on the
meta device: names and shapes only, so converting a file is checked tensor by tensor with ``is``).
"""
import argparse

import pytest
import timm
import torch

import models  # noqa: F401  (registers the variants)
from utils.training.checkpoint import CheckpointError, convert_state_dict, load_checkpoint, main, read_checkpoint

# the authors' released files (imagenet/checkpoints/download.sh) -> our model
RELEASED = ["maxformer_10_384", "maxformer_10_512", "maxformer_10_768", "ms_qkformer_10_384", "ms_qkformer_10_768"]
# the other family's embeddings have the same shapes in the same order (the older names' likely source)
OTHER = {"maxformer": "ms_qkformer", "ms_qkformer": "maxformer"}
EMBEDS = ("patch_embed1.", "patch_embed2.", "patch_embed3.")


def meta_state(name, **kwargs):
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return model, model.state_dict()


def other_family_names(name):
    """``{our key: the other family's key at the same position}`` for the patch embeddings."""
    family, width = name.rsplit("_10_", 1)
    _, own = meta_state(name)
    _, other = meta_state(f"{OTHER[family]}_10_{width}")
    mine = [k for k in own if k.startswith(EMBEDS)]
    theirs = [k for k in other if k.startswith(EMBEDS)]
    assert [own[k].shape for k in mine] == [other[k].shape for k in theirs]
    return dict(zip(mine, theirs))


def legacy(own, names):
    """A file in ``own``'s order whose keys are renamed by ``names`` (same tensor objects)."""
    return {names.get(k, k): v for k, v in own.items()}


def assert_converts_exactly(model, own, sd):
    converted, renames, refusals = convert_state_dict(model, sd)
    assert not refusals
    assert list(converted) == list(own)
    assert all(converted[k] is own[k] for k in own)
    return renames


@pytest.mark.parametrize("name", RELEASED)
def test_released_layout_with_table_names_converts(name, capsys):
    model, own = meta_state(name)
    names = other_family_names(name)
    renames = assert_converts_exactly(model, own, legacy(own, names))
    assert renames and all(how.startswith("table: ") for _, _, how in renames)
    # one line per module (conv or BN), not per tensor
    assert len(renames) == len({k.rpartition(".")[0] for k in names})
    if name.startswith("maxformer"):
        assert ("patch_embed2.proj3_conv", "patch_embed2.max_embed1.embed_conv",
                "table: QKFormer-era embedding names") in renames
    # load_checkpoint reports what it renamed and then loads strictly
    report = load_checkpoint(model, {"state_dict": legacy(own, names), "args": argparse.Namespace(model=name)})
    assert not any(report.values())
    out = capsys.readouterr().out
    assert "older parameter names converted" in out and "(table: " in out


@pytest.mark.parametrize("name", RELEASED)
def test_released_layout_with_other_names_aligns(name, capsys):
    model, own = meta_state(name)
    names = {k: f"{k.split('.')[0]}.layer{i}.{k.rsplit('.', 1)[1]}" for i, k in enumerate(own) if k.startswith(EMBEDS)}
    if name.startswith("maxformer"):  # a plausible older name of the 7x7 DWC mixer too
        names.update({k: k.replace("mixer.conv5", "mixer.conv") for k in own if "mixer.conv5" in k})
    renames = assert_converts_exactly(model, own, legacy(own, names))
    assert renames and all(how.startswith("alignment") for _, _, how in renames)
    assert not any(load_checkpoint(model, legacy(own, names)).values())
    assert "(alignment: same order, shapes and kinds)" in capsys.readouterr().out


def _refused(model, sd, *fragments):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, sd)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.mark.parametrize("name", ["maxformer_10_384", "ms_qkformer_10_768"])
def test_broken_legacy_files_are_refused_with_a_listing(name):
    model, own = meta_state(name)
    names = other_family_names(name)
    conv, shortcut = ("patch_embed2.proj3_conv.weight", "patch_embed2.proj_res_conv.weight") \
        if name.startswith("maxformer") else \
        ("patch_embed2.max_embed1.embed_conv.weight", "patch_embed2.max_embed2.embed_conv.weight")
    inverse = {v: k for k, v in names.items()}
    # a tensor missing
    sd = legacy(own, names)
    del sd[conv]
    msg = _refused(model, sd, "patch_embed2.*: the file's names differ", "tensors in the file",
                   f"(missing in the file) -> {inverse[conv]}")
    assert f"{shortcut} {tuple(own[inverse[shortcut]].shape)} -> {inverse[shortcut]}" in msg  # legacy -> current
    # two shapes swapped (3x3 main conv and 1x1 shortcut)
    sd = legacy(own, names)
    sd[conv], sd[shortcut] = sd[shortcut], sd[conv]
    _refused(model, sd, f"{conv} {tuple(own[inverse[shortcut]].shape)} -> {inverse[conv]}  <- shape")
    # an extra key
    sd = legacy(own, names)
    sd["patch_embed2.proj5_conv.weight"] = torch.zeros(3, device="meta")
    _refused(model, sd, "patch_embed2.proj5_conv.weight (3,) -> ", "tensors in the file")
    # the same shapes in another order: the names say one thing, the positions another
    sd = legacy(own, names)
    keys = list(sd)
    bn_main = [k for k in keys if k.startswith(conv.replace("conv.weight", "bn.").replace("proj3", "proj4")
                                               .replace("max_embed1.embed_conv", "embed1.embed_bn"))]
    bn_short = [k for k in keys
                if k.startswith(shortcut.replace("_conv.weight", "_bn.").replace("embed_conv", "embed_bn"))]
    assert len(bn_main) == len(bn_short) == 5
    order = [k for k in keys if k not in bn_short]
    i = order.index(bn_main[0])
    order[i:i] = bn_short  # shortcut BN moved before the main BN: same shapes position by position
    _refused(model, {k: sd[k] for k in order}, "is named", "but sits where the model has")


def test_plain_mismatch_is_not_mistaken_for_older_names():
    model, own = meta_state("maxformer_10_384")
    sd = dict(own)
    del sd["patch_embed2.embed1.embed_bn.bias"]
    msg = _refused(model, sd, "missing (1):\n    patch_embed2.embed1.embed_bn.bias")
    assert "names differ" not in msg and "strict=False" not in msg


# ------------------------------------------------------------------ this repository's earlier names
EARLIER = {"embed2.": "embed3.", "orig_embed1.": "embed2.",
           "attn.dwc.": "attn.dwc.conv.", "attn.dwc_bn.": "attn.dwc.conv_bn."}


def earlier_names(sd):
    out = {}
    for k, v in sd.items():
        for new, old in EARLIER.items():
            if f".{new}" in k and (k.startswith(("patch_embed2.", "patch_embed3.")) or "attn" in new):
                k = k.replace(f".{new}", f".{old}")
                break
        out[k] = v
    return out


def test_published_names_of_orig_later_and_ssa_dwc():
    _, own = meta_state("maxformer_cifar", embeds=("orig", "orig_later", "max"), mixers=("identity", "ssa_dwc3", "ssa"))
    embed = [k.rpartition(".")[0] for k in own if k.startswith("patch_embed2.") and k.endswith("conv.weight")]
    assert embed == ["patch_embed2.embed1.embed_conv", "patch_embed2.orig_embed1.embed_conv",
                     "patch_embed2.embed2.embed_conv"]
    assert tuple(own["patch_embed2.orig_embed1.embed_conv.weight"].shape)[2:] == (3, 3)
    assert tuple(own["patch_embed2.embed2.embed_conv.weight"].shape)[2:] == (1, 1)
    assert "stage2.0.attn.dwc.weight" in own and "stage2.0.attn.dwc_bn.running_var" in own


def test_files_with_this_repositorys_earlier_names_load(tmp_path, capsys):
    kwargs = dict(embeds=("orig", "orig_later", "orig_later"), mixers=("identity", "ssa_dwc3", "ssa_dwc5"),
                  embed_dims=32, num_heads=2, T=1)
    torch.manual_seed(0)
    src = timm.create_model("maxformer_cifar", **kwargs)
    old = earlier_names(src.state_dict())
    assert "patch_embed2.embed3.embed_bn.weight" in old and "stage3.0.attn.dwc.conv_bn.weight" in old
    assert "patch_embed2.orig_embed1.embed_conv.weight" not in old
    path = tmp_path / "earlier.pth.tar"
    torch.save({"state_dict": old, "epoch": 3}, path)
    torch.manual_seed(1)
    dst = timm.create_model("maxformer_cifar", **kwargs)
    assert not any(load_checkpoint(dst, str(path)).values())
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    out = capsys.readouterr().out
    assert ("patch_embed3.embed3.embed_bn -> patch_embed3.embed2.embed_bn"
            "  (table: this repository's earlier names)") in out
    assert "stage2.0.attn.dwc.conv -> stage2.0.attn.dwc  (table: this repository's earlier names)" in out
    x = torch.rand(1, 3, 16, 16)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))


# ------------------------------------------------------------------ python -m utils.training.checkpoint convert
def test_convert_command_writes_current_names(tmp_path, capsys):
    torch.manual_seed(0)
    kwargs = dict(embed_dims=64, num_heads=1, num_classes=10)
    src = timm.create_model("maxformer_10_384", **kwargs)
    names = {}
    _, qk = meta_state("ms_qkformer_10_384", **kwargs)
    mine = [k for k in src.state_dict() if k.startswith(EMBEDS)]
    names = dict(zip(mine, [k for k in qk if k.startswith(EMBEDS)]))
    legacy_path, out_path = tmp_path / "10-384-T4.pth.tar", tmp_path / "converted.pth.tar"
    torch.save({"epoch": 199, "arch": "maxformer_10_384", "state_dict": legacy(src.state_dict(), names),
                "optimizer": {"state": {}}, "args": argparse.Namespace(model="maxformer_10_384")}, legacy_path)
    code = main(["convert", str(legacy_path), str(out_path),
                 "--model-kwargs", "embed_dims=64", "num_heads=1", "num_classes=10"])
    assert code == 0
    out = capsys.readouterr().out
    assert "patch_embed1.proj_conv -> patch_embed1.embed1.embed_conv  (table: QKFormer-era embedding names)" in out
    written = read_checkpoint(out_path)
    assert written["epoch"] == 199 and "optimizer" not in written
    assert list(written["state_dict"]) == list(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(written["state_dict"][k], v), k
    dst = timm.create_model("maxformer_10_384", **kwargs)
    load_checkpoint(dst, str(out_path))
    assert capsys.readouterr().out == ""  # nothing left to rename
    # a file that does not fit: exit code 2 and the listing, nothing written
    bad = legacy(src.state_dict(), names)
    del bad["patch_embed3.proj4_bn.weight"]
    torch.save({"state_dict": bad}, legacy_path)
    assert main(["convert", str(legacy_path), str(tmp_path / "x.pth.tar"), "--model", "maxformer_10_384",
                 "--model-kwargs", "embed_dims=64", "num_heads=1", "num_classes=10"]) == 2
    assert "patch_embed3.proj4_bn.bias" in capsys.readouterr().err
    assert not (tmp_path / "x.pth.tar").exists()
    # no model recorded and none given
    assert main(["convert", str(legacy_path), str(tmp_path / "x.pth.tar")]) == 2
    assert "pass --model NAME" in capsys.readouterr().err
