"""utils.training.memory_plan: the planned peak (fake tensors) against the tensor peak measured on CPU, the paper's
Table 8, the batch search, the options that make a batch fit, and the command lines that print them."""
import json
import os
import time

import pytest
import torch

import benchmark
from utils.training import memory_plan as mp
from utils.training.fastpath import EAGER, FastPathConfig, prepare_model

SMALL = dict(embed_dims=64, num_heads=2)  # the CIFAR architecture at a sixth of its width


def _measured_mb(mode, amp, fp: FastPathConfig, T=2, batch=4, img=32):
    """``benchmark.py``'s ``tensor_peak_mb`` of a steady-state step (after one warm-up step)."""
    import argparse

    from models import create_model
    torch.manual_seed(0)
    model = create_model("maxformer_cifar", T=T, **SMALL)
    if mode == "train":
        model.train()
    prepare_model(model, mode, config=fp)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
    step = benchmark._make_step(model, x, y, argparse.Namespace(mode=mode, amp=amp), torch.device("cpu"))
    step()
    return benchmark.tensor_peak_mb(step, step.live_tensors)


def _planned_mb(mode, amp, fp: FastPathConfig, T=2, batch=4, img=32):
    settings = mp.fastpath_settings(fp)
    settings["compile"] = False
    plan = mp.plan_step("maxformer_cifar", T=T, batch=batch, img_size=img, amp=amp, mode=mode, model_kwargs=SMALL,
                        device="cpu", **settings)
    return plan.peak / mp.MiB, plan


@pytest.mark.parametrize("mode, amp, fp", [
    ("train", "none", EAGER),  # the plain path: spikingjelly neurons
    ("train", "bf16", FastPathConfig(compile=False)),  # torch neurons, fast convolution and pooling, bf16
    ("train", "none", FastPathConfig(compile=False, grad_checkpointing=True, compact_spikes=True)),
    ("infer", "none", EAGER),
], ids=["train-eager", "train-bf16-fastpath", "train-checkpointing-compact", "infer-eager"])
def test_plan_matches_measured_tensor_peak(one_thread, mode, amp, fp):
    planned, plan = _planned_mb(mode, amp, fp)
    measured = _measured_mb(mode, amp, fp)
    assert planned == pytest.approx(measured, rel=0.10), plan.describe()
    if mode == "train":  # AdamW: two moments per parameter; gradients as large as the weights
        assert plan.optimizer >= 2 * plan.grads > 0 and plan.activations > 0
    else:
        assert plan.grads == plan.optimizer == 0


def test_memory_options_are_planned_and_lower_memory():
    full, _ = _planned_mb("train", "none", FastPathConfig(compile=False))
    compact, _ = _planned_mb("train", "none", FastPathConfig(compile=False, compact_spikes=True))
    both, _ = _planned_mb("train", "none", FastPathConfig(compile=False, compact_spikes=True, grad_checkpointing=True))
    assert both < 0.8 * compact and compact < 0.95 * full  # spikes saved as bool are found without values


TINY = dict(model_name="maxformer_cifar", T=1, img_size=32, model_kwargs=SMALL, neuron_impl="spikingjelly",
            compile=False, fast_conv=False, device="cuda")  # few ops: quick to plan


def test_max_batch_is_the_largest_that_fits_and_options_make_a_batch_fit():
    p5, p6 = (mp.plan_step(batch=b, **TINY) for b in (5, 6))
    budget = (p5.peak + p6.peak) // 2 + mp.CUDA_OVERHEAD
    assert p5.peak < p6.peak and p5.peak % mp.CUDA_BLOCK == 0  # the caching allocator's 512-byte blocks
    best, plan = mp.max_batch(TINY, budget)
    assert best == 5 and plan.peak == p5.peak
    assert mp.max_batch(TINY, mp.CUDA_OVERHEAD + 1) == (0, None)
    # batch 6 does not fit: checkpointing does, and batch 3 with 2 accumulation steps
    options = dict(mp.fit_options({**TINY, "batch": 6}, budget))
    assert "--grad-checkpointing" in options and options["--batch-size 3 --accum-steps 2"].batch == 3
    assert all(mp.fits(p, budget) for p in options.values())


def test_parse_bytes():
    assert mp.parse_bytes("80GB") == 80 * 2 ** 30
    assert mp.parse_bytes("24 GiB") == 24 * 2 ** 30
    assert mp.parse_bytes("15431MB") == 15431 * 2 ** 20
    assert mp.parse_bytes("1.5g") == int(1.5 * 2 ** 30)
    with pytest.raises(mp.MemoryPlanError, match="80GB"):
        mp.parse_bytes("eighty gigs")


def test_plan_memory_of_a_config_and_the_train_warning(monkeypatch):
    from utils.config import parse_config
    cfg = parse_config(["-c", os.path.join(os.path.dirname(__file__), "..", "demo", "digits.yaml"),
                        "--device", "cuda"])
    planned = mp.plan_memory(cfg)
    plain = mp.plan_step("maxformer_cifar", T=2, batch=64, img_size=16, model_kwargs=cfg.model_kwargs,
                         num_classes=10, neuron_impl="spikingjelly", compile=False, fast_conv=False, device="cuda",
                         optimizer=cfg.opt)
    assert planned == plain.peak  # fastpath: false in the demo config: the plain path
    assert mp.device_memory_warning(cfg, torch.device("cpu")) is None  # CPU: never planned
    props = type("Props", (), {"total_memory": planned + mp.CUDA_OVERHEAD - 1})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Small GPU")
    warning = mp.device_memory_warning(cfg, torch.device("cuda"))
    assert "exceeds Small GPU" in warning and "--max-batch" in warning
    props.total_memory = planned + mp.CUDA_OVERHEAD
    assert mp.device_memory_warning(cfg, torch.device("cuda")) is None


def test_benchmark_plan_memory_and_max_batch(capsys):
    row = benchmark.main(["--plan-memory", "--smoke", "--model", "maxformer_cifar", "-b", "2", "--eager"])[0]
    out = capsys.readouterr().out
    assert "optimizer state" in out and "total (peak of tensors)" in out
    assert json.loads(out.splitlines()[-1]) == row
    assert row["device"] == "cuda" and row["total_mb"] > row["weights_mb"] > 0
    small = f"{int(row['total_mb'] + mp.CUDA_OVERHEAD / mp.MiB) - 1}MB"  # batch 2 does not fit, batch 1 does
    row = benchmark.main(["--plan-memory", "--smoke", "--model", "maxformer_cifar", "-b", "2", "--eager",
                          "--max-batch", "--device-memory", small])[0]
    out = capsys.readouterr().out
    assert row["max_batch"] == 1 and "largest batch that fits" in out
    assert "does not fit" in out and any("--accum-steps" in k for k in row["fit_options"])


def test_table8_training_memory_within_20_percent_of_the_paper():
    """maxformer_10_768, T=1, batch 32, 224x224: 15,431 MB in training on an A30 (paper, Table 8), planned
    for the published (plain eager, float32) path."""
    start = time.process_time()
    plan = mp.plan_step("maxformer_10_768", T=1, batch=32, img_size=224, neuron_impl="spikingjelly", compile=False,
                        fast_conv=False, device="cuda")
    assert plan.peak / 1e6 == pytest.approx(15431 * 2 ** 20 / 1e6, rel=0.20)
    assert time.process_time() - start < 20


def test_large_steps_are_extrapolated_from_small_plans_exactly(monkeypatch):
    """T x batch beyond what runs op by op in seconds: four small plans, extended bilinearly, give the same bytes."""
    kw = dict(model_kwargs={"embed_dims": 32, "num_heads": 2}, device="cuda")
    monkeypatch.setattr(mp, "EXACT_T", 4)
    monkeypatch.setattr(mp, "EXACT_WORK", 32)
    estimate = mp.plan_step("maxformer_cifar", T=7, batch=24, **kw)
    assert estimate.estimate == "extrapolated linearly from plans at T 2, 4 and batch 4, 8"
    assert "(extrapolated linearly" in estimate.describe() and estimate.as_dict()["estimate"]
    monkeypatch.setattr(mp, "EXACT_T", 64)
    monkeypatch.setattr(mp, "EXACT_WORK", 1 << 20)
    exact = mp.plan_step("maxformer_cifar", T=7, batch=24, **kw)
    assert not exact.estimate
    assert (estimate.batch, estimate.T) == (exact.batch, exact.T) == (24, 7)
    assert estimate.peak == pytest.approx(exact.peak, rel=0.01)  # exact at the real corner sizes (T 4-8, b 64-256)
    assert (estimate.weights, estimate.grads, estimate.optimizer) == (exact.weights, exact.grads, exact.optimizer)


def test_an_absurd_step_is_planned_from_four_small_ones(monkeypatch):
    """benchmark.py --plan-memory -b 4096 -T 1000 used to run every op of that step (minutes, silent)."""
    sizes = []
    real = mp._plan

    def counted(model_name, T, batch, *args):
        sizes.append((T, batch))
        return real(model_name, T, batch, *args)

    monkeypatch.setattr(mp, "_plan", counted)
    plan = mp.plan_step("maxformer_cifar", T=1000, batch=4096, model_kwargs={"embed_dims": 32, "num_heads": 2})
    assert len(sizes) <= 4 and all(T <= mp.EXACT_T and T * b <= mp.EXACT_WORK for T, b in sizes)
    assert plan.T == 1000 and plan.batch == 4096 and plan.peak > 1000 * 4096 * 32 * 4  # a step of that size


@pytest.fixture
def constructions(monkeypatch):
    """Counts of model constructions by where their weights live ('meta', 'fake' or 'real'), from a fresh meta
    cache and no plans made yet."""
    import collections

    import timm
    from torch._subclasses.fake_tensor import FakeTensor

    from models import factory

    counts = collections.Counter()
    real = timm.create_model

    def counted(*args, **kwargs):
        model = real(*args, **kwargs)
        p = next(model.parameters())
        counts["fake" if isinstance(p, FakeTensor) else "meta" if p.is_meta else "real"] += 1
        return model

    monkeypatch.setattr(timm, "create_model", counted)
    monkeypatch.setattr(factory, "_META_MODELS", collections.OrderedDict())
    monkeypatch.setattr(mp, "_PLANS", {})
    return counts


def test_a_cuda_training_start_builds_its_model_once_and_once_on_the_meta_device(constructions):
    """The config check, the memory plan (its T and every batch of an extrapolated plan) and the doctor share one
    meta-device build; the real build is the only other."""
    from utils.training import engine, preflight

    cfg = preflight.parse_run_config(["-c", os.path.join(os.path.dirname(__file__), "..", "demo", "digits.yaml"),
                        "--device", "cuda", "--batch-size", str(2 * mp.EXACT_WORK)])
    plan = mp._plan_for_config(cfg)
    assert plan.device == "cuda" and "batch" in plan.estimate  # planned from two smaller batches
    assert preflight._check_memory(cfg, False, 0).status in ("PASS", "FAIL")
    assert preflight._check_neurons(cfg, torch.device("cpu")).status == "PASS"
    assert constructions == {"meta": 1}
    model = engine.build_model(cfg, 10)
    assert constructions == {"meta": 1, "real": 1} and not next(model.parameters()).is_meta


def test_meta_builds_are_copies_of_one_build_per_setting(constructions):
    from models import build_model, factory

    a = build_model("maxformer_cifar", T=2, meta=True, model_kwargs={"embed_dims": 32, "num_heads": 1})
    a.head = torch.nn.Identity()  # a caller's change stays in its copy
    b = build_model("maxformer_cifar", meta=True, T=2, embed_dims=32, num_heads=1, drop_rate=None)
    assert constructions == {"meta": 1} and a is not b and not isinstance(b.head, torch.nn.Identity)
    build_model("maxformer_cifar", T=2, meta=True, model_kwargs={"embed_dims": 32, "num_heads": 1}, drop_rate=0)
    build_model("maxformer_cifar", T=2, meta=True, model_kwargs={"embed_dims": 32, "num_heads": 1}, drop_rate=0.0)
    assert constructions == {"meta": 3}  # another setting, and 0 and 0.0 are not taken for the same
    for T in range(3, factory.META_CACHE_SIZE + 4):
        build_model("maxformer_cifar", T=T, meta=True, model_kwargs={"embed_dims": 32, "num_heads": 1})
    assert len(factory._META_MODELS) == factory.META_CACHE_SIZE


def test_fake_storage_covers_parameters_buffers_and_plain_tensor_attributes():
    with torch.device("meta"):
        model = torch.nn.BatchNorm1d(3)
        model.scale = torch.ones(3)  # a tensor that is neither a parameter nor a buffer
    with mp._fake_mode():
        mp._fake_storage(model)
        out = model(torch.empty(4, 3)) * model.scale
    tensors = [*model.parameters(), *model.buffers(), model.scale, out]
    assert not any(t.is_meta for t in tensors) and all(t.device.type == "cpu" for t in tensors)
    assert all(p.requires_grad for p in model.parameters())
