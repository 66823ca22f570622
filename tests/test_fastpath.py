"""Fast paths (utils.training.fastpath, the torch neuron of models.neurons) compute what the eager path computes.

Golden cases 1-5 run through the fast path with utils.verify.conformance.check_file (same tolerances
as the plain conformance test). Compilation is slow on 2 cores, so one golden case runs
compiled; the others run every non-compile transformation.
"""
import copy
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import models  # noqa: F401
import timm
from models import reset_net
from models.neurons import NeuronConfig, TorchIFNode, TorchLIFNode, convert_neurons
from spikingjelly.activation_based import neuron as sj_neuron
from utils.training import fastpath
from utils.verify.conformance import check_file
from tests.helpers import require_cpp_compiler
from utils.training.engine import amp_context

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")
CASES = ["case1_cifar_max_former", "case2_cifar_ms_qkformer", "case3_event_max_former",
         "case4_imagenet_maxformer", "case5_imagenet_ms_qkformer"]


def _transform(infer=None, train=None):
    """check_file transform: the fast path with per-mode overrides (eval pass on a copy, so BN
    folding cannot leak into the train pass)."""

    def transform(model, mode, x):
        if mode == "infer":
            model = copy.deepcopy(model)
        return fastpath.prepare_model(model, mode, example_input=x, **((infer if mode == "infer" else train) or {}))

    return transform


# ------------------------------------------------------------------------------- neurons
@pytest.mark.parametrize("kind,v_reset,v_th", [("lif", 0.0, 1.0), ("lif", None, 0.5), ("if", 0.0, 1.0),
                                               ("if", None, 1.0)])
def test_torch_neuron_matches_spikingjelly(kind, v_reset, v_th):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 5, 5, generator=g) * 1.5
    w = torch.randn(x.shape, generator=g)
    out = {}
    for impl in ("spikingjelly", "torch"):
        node = NeuronConfig(kind=kind, v_reset=v_reset, impl=impl).make(v_th)
        xi = x.clone().requires_grad_()
        s = node(xi)
        (s * w).sum().backward()
        out[impl] = (s.detach(), xi.grad, node.v.clone())
        node.reset()
        assert isinstance(node.v, float)  # reset_net semantics kept
    (s0, g0, v0), (s1, g1, v1) = out["spikingjelly"], out["torch"]
    assert 0 < s0.mean() < 1
    assert torch.equal(s0, s1) and torch.equal(v0, v1)  # spikes and final state: bitwise
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)  # grads: ulp-level (different op order)


def test_torch_neuron_keeps_layout_dtype_and_state_api():
    node = NeuronConfig(impl="torch").make()
    assert isinstance(node, TorchLIFNode) and isinstance(node, sj_neuron.LIFNode)
    assert isinstance(NeuronConfig(kind="if", impl="torch").make(), TorchIFNode)
    x = torch.randn(2, 3, 4, 5, 5).to(torch.bfloat16)
    s = node(x)
    assert s.dtype == torch.bfloat16 and node.v.dtype == torch.float32  # state stays fp32
    with pytest.raises(ValueError, match="impl"):
        NeuronConfig(impl="cupy")


def test_convert_neurons_round_trip():
    model = timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=1)
    n_all = sum(1 for m in model.modules() if isinstance(m, sj_neuron.BaseNode))
    assert convert_neurons(model, "torch") == n_all > 0
    assert all(type(m) in (TorchLIFNode, TorchIFNode) for m in model.modules() if isinstance(m, sj_neuron.BaseNode))
    assert convert_neurons(model, "torch") == 0
    assert convert_neurons(model, "spikingjelly") == n_all
    with pytest.raises(ValueError, match="impl"):
        convert_neurons(model, "fast")


# -------------------------------------------------------------------------- golden cases
@pytest.mark.parametrize("case", CASES)
def test_golden_through_fast_path(case):
    """Torch neurons; eval: channels-last + BN folding; train: gradient checkpointing, bool spike
    storage, matmul 1x1 backward and channels-last max-pool.

    (Channels-last *training* is not offered as a default: its BatchNorm batch statistics round
    differently and flip spikes in case 3, far outside the logit tolerance.)
    """
    res = check_file(os.path.join(GOLDEN, case + ".pt"),
                     transform=_transform(infer=dict(compile=False, channels_last=True, fold_bn=True),
                                          train=dict(compile=False, grad_checkpointing=True, compact_spikes=True)))
    assert res.passed, res.line()


def compiled_golden_line(case: str) -> str:
    """Golden ``case`` through the compiled defaults; the verdict line (``PASS``/``FAIL ...``)."""
    torch.set_num_threads(2)  # as the golden vectors were made
    return check_file(os.path.join(GOLDEN, case + ".pt"), transform=_transform()).line()


@pytest.mark.parametrize("case", ["case1_cifar_max_former"])
def test_golden_through_compiled_defaults(case):
    """The benchmark/train defaults (fastpath.DEFAULTS, with torch.compile) stay within tolerance.

    Case 1 is the one whose gradients break under whole-model compilation of the train pass. It runs in a fresh
    interpreter: torch.compile's process-wide state, left by the many models compiled earlier in a whole-suite run,
    made dynamo's guard building fail (IndexError) there, never in a process of its own.
    """
    require_cpp_compiler()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"from tests.test_fastpath import compiled_golden_line; print(compiled_golden_line({case!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("PASS"), r.stdout


# ------------------------------------------------------------------ individual transforms
def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("maxformer_cifar", embed_dims=32, num_heads=2, T=2, **kw)


def _warm_bn(model, x):
    """A few train passes so eval-mode BN statistics are not the trivial 0/1."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x + 0.1 * torch.randn_like(x))
            reset_net(model)


def test_grad_checkpointing_is_exact():
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    ref, ckpt = _tiny(), _tiny()
    assert fastpath.enable_grad_checkpointing(ckpt) == 7  # 3 embeddings + 1 + 1 + 2 blocks
    assert list(ckpt.state_dict()) == list(ref.state_dict())
    for m in (ref, ckpt):
        m.train()
        F.cross_entropy(m(x), y).backward()
        reset_net(m)
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(ref.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), name  # BN running stats updated once, not twice


def test_fold_batchnorm_finds_conv_bn_pairs_and_keeps_logits():
    x = torch.randn(4, 3, 32, 32)
    model = _tiny()
    _warm_bn(model, x)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    reset_net(model)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = fastpath.fold_batchnorm(model, x)
    assert folded == n_bn  # in Max-Former every BN directly follows a conv
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        fastpath.fold_batchnorm(_tiny().train(), x)


def test_fold_batchnorm_skips_bn_not_fed_by_a_conv():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x) + 1.0)  # the BN input is not the conv output

    net = Net().eval()
    assert fastpath.fold_batchnorm(net, torch.randn(1, 3, 4, 4)) == 0
    assert isinstance(net.bn, torch.nn.BatchNorm2d)


def test_prepare_model_infer_keeps_state_dict_keys_except_folded():
    model = _tiny()
    keys = set(model.state_dict())
    fastpath.prepare_model(model, "train", compile=False, channels_last=True)
    assert set(model.state_dict()) == keys
    assert model.fastpath_config.neuron_impl == "torch"


def test_bf16_autocast_train_and_infer_on_cpu():
    x = torch.randn(2, 3, 32, 32)
    model = fastpath.prepare_model(_tiny(), "train", compile=False)
    with amp_context("bf16", "cpu")():
        out = model(x)
    F.cross_entropy(out.float(), torch.tensor([0, 1])).backward()
    reset_net(model)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="fp16"):
        amp_context("fp16", "cpu")
    with pytest.raises(ValueError, match="amp"):
        amp_context("int8", "cpu")


def test_resolve_config_is_the_one_place_switches_are_resolved(monkeypatch):
    cfg, warning = fastpath.resolve_config("train")
    assert cfg == fastpath.default_config("train") and warning is None or "compiler" in warning
    cfg, _ = fastpath.resolve_config("train", "bf16", channels_last=None, compile="none", compact_spikes=True)
    assert cfg.compile is False and cfg.compact_spikes and cfg.channels_last  # None keeps the amp default
    assert fastpath.resolve_config("infer", eager=True, channels_last=True)[0] == dataclasses.replace(
        fastpath.EAGER, channels_last=True)
    monkeypatch.setattr(fastpath, "cpp_compiler", lambda: None)
    cfg, warning = fastpath.resolve_config("train", compile="model")
    assert cfg.compile is False and "no C++ compiler" in warning
    cfg, warning = fastpath.resolve_config("train", device="cuda", compile="model")
    assert cfg.compile == "model" and warning is None


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="mode"):
        fastpath.prepare_model(_tiny(), "eval")
    with pytest.raises(ValueError, match="compile"):
        fastpath.prepare_model(_tiny(), "train", compile="everything")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_golden_on_cuda(case):
    """spikingjelly's GPU kernels against the golden vectors (run by bench/gpu_check.sh)."""
    res = check_file(os.path.join(GOLDEN, case + ".pt"), transform=_cuda_transform)
    assert res.passed, res.line()


class _OnCuda(torch.nn.Module):
    """Runs the wrapped (CUDA) model on CPU inputs and returns CPU outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.cuda()).cpu()


def _cuda_transform(model, mode, x):
    return _OnCuda(model.cuda())


# ------------------------------------------------- convolutions, pooling, checkpoint memory
def _train_grads(model, x, y):
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(_count_saved, lambda t: t):
        out = model(x)
    F.cross_entropy(out, y).backward()
    reset_net(model)
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


_SAVED_DTYPES = []


def _count_saved(t):
    _SAVED_DTYPES.append(t.dtype)
    return t


def test_fast_conv_compact_spikes_and_fast_pool_match_eager():
    """Same forward bitwise (spikes unchanged); gradients within the golden tolerance; binary
    conv inputs are saved as bool; the 1x1 matmul backward is exercised (32x32 = 1024 positions)."""
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([1, 7, 3, 0])
    ref, fast = _tiny(), _tiny()
    fastpath.prepare_model(ref, "train", compile=False, fast_conv=False, fast_pool=False)
    fastpath.prepare_model(fast, "train", compile=False, compact_spikes=True)
    assert list(fast.state_dict()) == list(ref.state_dict())
    _SAVED_DTYPES.clear()
    out_ref, g_ref = _train_grads(ref, x, y)
    assert torch.bool not in _SAVED_DTYPES
    _SAVED_DTYPES.clear()
    out_fast, g_fast = _train_grads(fast, x, y)
    assert _SAVED_DTYPES.count(torch.bool) >= 10
    assert torch.equal(out_ref, out_fast)
    scale = max(g.abs().max().item() for g in g_ref.values())
    for name, g in g_ref.items():
        assert torch.allclose(g_fast[name], g, rtol=1e-4, atol=1e-5 * scale), name


def test_conv_function_matmul_and_aten_branches_and_non_binary_input():
    torch.manual_seed(0)
    for shape, k, binary in [((4, 8, 16, 16), 1, True), ((4, 8, 16, 16), 3, True), ((4, 8, 20), 1, False)]:
        x = (torch.rand(shape) < 0.3).float() if binary else torch.randn(shape)
        conv = (torch.nn.Conv2d if len(shape) == 4 else torch.nn.Conv1d)(8, 12, k, padding=k // 2)
        fast = copy.deepcopy(conv)
        assert fastpath.enable_fast_conv(fast, compact_spikes=True) == 1
        xs = [x.clone().requires_grad_() for _ in range(2)]
        out = [m(t) for m, t in zip((conv, fast), xs)]
        assert torch.equal(out[0], out[1])
        g = torch.randn_like(out[0])
        for o in out:
            o.backward(g)
        assert torch.allclose(xs[1].grad, xs[0].grad, atol=1e-5)
        for p, q in zip(conv.parameters(), fast.parameters()):
            assert torch.allclose(q.grad, p.grad, rtol=1e-5, atol=1e-5)


def test_fast_pool_is_bitwise_with_ties_and_keeps_spikingjelly_multistep():
    from spikingjelly.activation_based import layer as sj_layer
    x = torch.randn(2, 3, 9, 9).round()  # many exact ties
    for pool in (torch.nn.MaxPool2d(3, 2, 1), sj_layer.MaxPool2d(3, 2, 1, step_mode="m")):
        inp = x.unsqueeze(0).repeat(2, 1, 1, 1, 1) if isinstance(pool, sj_layer.MaxPool2d) else x
        fast = copy.deepcopy(pool)
        assert fastpath.enable_fast_pool(fast) == 1 and isinstance(fast, type(pool))
        a, b = inp.clone().requires_grad_(), inp.clone().requires_grad_()
        ya, yb = pool(a), fast(b)
        assert torch.equal(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(a.grad, b.grad)


def test_grad_checkpointing_peak_tensor_memory_is_lower():
    """Recomputed activations are freed after use (the neurons' recomputed membranes used to
    keep every recomputed graph alive until reset_net)."""
    import benchmark
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    peaks = {}
    for ckpt in (False, True):
        m = _tiny()
        fastpath.prepare_model(m, "train", compile=False, grad_checkpointing=ckpt)
        m.train()

        def step(m=m):
            F.cross_entropy(m(x), y).backward()
            reset_net(m)

        step()
        peaks[ckpt] = benchmark.tensor_peak_mb(step, lambda m=m: [x, *m.parameters()])
    assert peaks[True] < 0.75 * peaks[False], peaks
