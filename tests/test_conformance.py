"""Golden conformance of Max-Former / MS-QKFormer (cases 1-5) and the ``utils.verify.conformance`` CLI."""
import os

import pytest
import torch
import torch.nn.functional as F

import models.published
from models.maxformer import SpikingTransformer
from models.neurons import reset_net
from utils.verify import conformance
from utils.verify.conformance import LOGIT_ATOL, Prepared, check_file, main

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")
CASES = ["case1_cifar_max_former.pt", "case2_cifar_ms_qkformer.pt", "case3_event_max_former.pt",
         "case4_imagenet_maxformer.pt", "case5_imagenet_ms_qkformer.pt"]


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case):
    res = check_file(os.path.join(GOLDEN, case))
    assert res.passed, res.line()
    assert res.eval_dev < LOGIT_ATOL and res.train_dev < LOGIT_ATOL
    assert res.grad_ratio < 1.0 and res.n_grads > 50
    assert abs(res.loss - res.ref_loss) < 1e-5


# ----------------------------------------------------------- the command on synthetic files
TINY = "tests/tiny.py::Tiny"


def _tiny_model(kwargs):
    return SpikingTransformer(embeds=("orig", "max"), mixers=("dwc3", "ssa"), depths=(1, 1), embed_dims=16,
                              num_heads=2, T=kwargs.get("T", 2), num_classes=5)


def make_golden(path, seed=7, extra_key=False, state_dict=True):
    """A golden file in the shared format, produced by our own tiny model."""
    torch.manual_seed(seed)
    model = _tiny_model({})
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 16, 16))
    reset_net(model)
    for m in bns:
        m.momentum = 0.1
    x, targets = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y_eval = model.eval()(x)
    reset_net(model)
    y_train = model.train()(x)
    loss = F.cross_entropy(y_train, targets)
    loss.backward()
    reset_net(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    if extra_key:  # a published module our model does not build (cf. Spikformer's LayerNorms)
        sd["unused_norm.weight"] = torch.ones(3)
        grads["unused_norm.weight"] = torch.zeros(3)
    torch.save(dict(case="tiny", model_ctor=TINY, kwargs={"T": 2}, T=2, seed=seed,
                    state_dict=sd if state_dict else None, x=x, targets=targets, y_eval=y_eval.detach(),
                    y_train=y_train.detach(), grads=grads, loss=loss.detach(), grads_none=[]), path)
    return path


@pytest.fixture
def tiny_ctor(monkeypatch):
    """Register the tiny test constructor the way models.published does."""
    table = dict(models.published.REFERENCE_CTORS)
    monkeypatch.setattr(models.published, "REFERENCE_CTORS", table)
    return table


def test_cli_pass_fail_and_exit_status(tmp_path, tiny_ctor, capsys):
    tiny_ctor[TINY] = _tiny_model
    good = make_golden(tmp_path / "good.pt")
    bad = torch.load(good, weights_only=True)
    bad["grads"]["stage2.0.attn.q_conv.weight"] += 1e-2 * bad["grads"]["stage2.0.attn.q_conv.weight"].abs().max() + 1e-3
    bad["y_eval"][0, 0] += 1e-3
    torch.save(bad, tmp_path / "bad.pt")

    assert main([str(good)]) == 0
    assert main([str(good), str(tmp_path / "bad.pt")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("PASS  good.pt  [tests/tiny.py::Tiny]  eval 0.00e+00")
    assert lines[1].startswith("PASS  good.pt")
    assert lines[2].startswith("FAIL  bad.pt") and "eval logits differ" in lines[2]
    assert "stage2.0.attn.q_conv.weight" in lines[2] and "train logits differ" not in lines[2]
    with pytest.raises(SystemExit) as stop:  # a missing file stops before any check runs
        main([str(good), str(tmp_path / "missing.pt")])
    assert stop.value.code == 2 and "missing.pt" in capsys.readouterr().err
    assert capsys.readouterr().out == ""


def test_prepare_hook_and_reference_key_filter(tmp_path, tiny_ctor, capsys):
    # weights regenerated from the seed: the file has no state_dict, the builder supplies prepare()
    def with_prepare(kwargs):
        model = _tiny_model(kwargs)

        def prepare(m, golden):
            ref = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
            return Prepared(state_dict=ref, checks={"sha256": (True, "regenerated")})

        return model, prepare

    make_golden(tmp_path / "full.pt")
    tiny_ctor[TINY] = with_prepare
    make_golden(tmp_path / "no_sd.pt", state_dict=False)
    assert main([str(tmp_path / "no_sd.pt")]) == 0
    assert "sha256 ok (regenerated)" in capsys.readouterr().out

    # extra published keys: load fails unless the model's filter_reference_state_dict drops them
    tiny_ctor[TINY] = _tiny_model
    make_golden(tmp_path / "extra.pt", extra_key=True)
    res = check_file(str(tmp_path / "extra.pt"))
    assert not res.passed and "state_dict does not load" in res.line()

    def filtering(kwargs):
        model = _tiny_model(kwargs)
        model.filter_reference_state_dict = lambda sd: {k: v for k, v in sd.items() if not k.startswith("unused_")}
        return model

    tiny_ctor[TINY] = filtering
    assert check_file(str(tmp_path / "extra.pt")).passed


def test_unknown_constructor_is_named(tmp_path, capsys):
    golden = torch.load(os.path.join(GOLDEN, CASES[0]), weights_only=True)
    golden["model_ctor"] = "cifar10-100/max_former.py::Max_Formr"
    torch.save(golden, tmp_path / "typo.pt")
    assert main([str(tmp_path / "typo.pt")]) == 1
    out = capsys.readouterr().out
    assert "no builder for reference constructor 'cifar10-100/max_former.py::Max_Formr'" in out
    assert "Did you mean 'cifar10-100/max_former.py::Max_Former'" in out


def test_ctor_table_covers_every_published_family():
    table = conformance.reference_ctors()
    assert "cifar10-100/max_former.py::Max_Former" in table and "imagenet/ms_qkformer.py::MS_QKformer" in table
    assert all(callable(b) for b in table.values())


def test_a_file_that_is_not_a_golden_case_is_named(tmp_path, tiny_ctor, capsys):
    """A checkpoint given by mistake used to print 'FAIL ... eval nan'; now it says what a golden case is."""
    tiny_ctor[TINY] = _tiny_model
    good = make_golden(tmp_path / "good.pt")
    torch.save({"epoch": 0, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "last.pth.tar")
    (tmp_path / "notes.pt").write_text("hello\n")
    assert main([str(tmp_path / "last.pth.tar"), str(good), str(tmp_path / "notes.pt")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"error: {tmp_path / 'last.pth.tar'} is a training checkpoint, not a golden case file "
                               f"(it has no model_ctor, x, targets, y_eval, y_train, loss). A golden case holds")
    assert lines[1].startswith("PASS  good.pt")
    assert lines[2].startswith("error: not a golden case file: ") and "is a text file" in lines[2]
    assert "nan" not in "\n".join(lines)
