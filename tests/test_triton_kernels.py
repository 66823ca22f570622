"""spikingjelly's Triton LIF/IF kernels (``impl='triton'``) against the CPU path, on CPU via Triton's interpreter.

The kernels run in subprocesses (``tests/triton_cases.py``, ``utils.verify.conformance``) started with
``TRITON_INTERPRET=1``: the interpreter is chosen when spikingjelly's kernel modules are imported,
so this process's imports cannot decide it. With a GPU, the same cases also run on the compiled kernels.
"""
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest
import torch
import yaml

from models.neurons import spiking_modules

from tests.triton_cases import case_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden", "case1_cifar_max_former.pt")

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not importable (it ships with the CUDA builds of torch)")


def _run(args, device="cpu", timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:  # the compiled kernels
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# the interpreter everywhere; the compiled kernels too where there is a GPU
@pytest.fixture(scope="module", params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def results(request):
    device = request.param
    proc = _run(["-m", "tests.triton_cases", "--device", device], device)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["case"]: row for row in rows}


@needs_triton
def test_kernels_ran_as_intended(results):
    info = results["kernels"]
    expect_interpreter = info["device"] == "cpu"
    assert info["interpreted"] == {"lif": expect_interpreter, "if": expect_interpreter}


@needs_triton
@pytest.mark.parametrize("case", list(case_ids()))
def test_kernel_matches_torch_path(results, case):
    row = results[case]
    assert row["spikes_equal"] and row["v_equal"], row  # bitwise
    assert row["grad_ratio"] <= 1.0, row  # golden tolerance (fp32), one storage ulp (bf16/fp16)
    dtype = case.split("-")[1]
    expected = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    assert row["spike_dtype"] == expected == row["grad_dtype"]
    assert row["grad_layout_kept"] and 0.05 < row["rate"] < 0.6, row  # the neurons fire, not always


@needs_triton
def test_golden_case_through_triton_kernels():
    proc = _run(["-m", "utils.verify.conformance", "--neuron-impl", "triton", GOLDEN])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("PASS  case1_cifar_max_former.pt"), proc.stdout


@needs_triton
def test_train_config_key_runs_the_kernels(tmp_path):
    # the fast path with neuron_impl: triton: no compile, Triton neurons, recorded in args.yaml
    proc = _run(["train.py", "-c", "demo/digits.yaml", "--img-size", "16", "--model-kwargs", "embed_dims=16",
                 "--T", "2", "--batch-size", "16", "--progress", "false", "--workers", "0", "--device", "cpu",
                 "--fastpath", "true",
                 "--neuron-impl", "triton", "--epochs", "1", "--max-train-batches", "1", "--max-eval-batches", "1",
                 "--plot", "false", "--tensorboard", "false", "--output", str(tmp_path), "--experiment", "tri"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    info = yaml.safe_load((tmp_path / "tri" / "args.yaml").read_text())["run_info"]
    assert info["fastpath"]["neuron_impl"] == "triton" and info["fastpath"]["compile"] is False
    expected = "25 lif: spikingjelly lif Triton kernels (impl='triton', Triton interpreter on CPU)"
    assert info["neuron_implementation"] == expected


def test_triton_impl_needs_the_shim_registered(monkeypatch):
    from models import ModelError, create_model
    from models import neurons

    monkeypatch.delitem(neurons._IMPLEMENTATIONS, "triton", raising=False)
    with pytest.raises(ModelError, match=r"neuron impl 'triton' is not registered.*import utils\.verify\.triton_cpu"):
        create_model("maxformer_cifar", neuron_impl="triton", embed_dims=16, num_heads=1)


def test_neuron_impl_model_kwarg_and_fast_path_rules():
    from models import create_model, describe_neurons
    from utils.training.fastpath import resolve_config
    from utils.verify.triton_cpu import TritonIFNode

    model = create_model("maxformer_cifar", neuron_impl="triton", neuron="if", embed_dims=16, num_heads=1)
    assert describe_neurons(model).startswith("25 if: spikingjelly if Triton kernels (impl='triton'")
    assert all(type(m) is TritonIFNode for _, m in spiking_modules(model))
    with pytest.raises(Exception, match="neuron_impl='triton' and impl='torch' disagree"):
        create_model("maxformer_cifar", neuron_impl="triton", impl="torch")
    cfg, _ = resolve_config("train", neuron_impl="triton")  # the default neuron compile is dropped
    assert cfg.neuron_impl == "triton" and cfg.compile is False
    with pytest.raises(ValueError, match="compile 'model' cannot trace them"):
        resolve_config("train", neuron_impl="triton", compile="model")


# ------------------------------------------------ the pin on spikingjelly's private API (no kernels run)
def test_other_spikingjelly_version_is_refused(monkeypatch):
    from utils.verify import triton_cpu

    monkeypatch.setattr(triton_cpu.importlib.metadata, "version", lambda name: "2.1.0")
    triton_cpu.load_kernels.cache_clear()
    try:
        with pytest.raises(triton_cpu.TritonAPIError, match=r"spikingjelly 2\.0\.0.*spikingjelly 2\.1\.0 is "
                                                                 r"installed.*spikingjelly==2\.0\.0"):
            triton_cpu.load_kernels("lif")
    finally:
        triton_cpu.load_kernels.cache_clear()


def _launcher_without_guard(x, *, _kernel_wrapper=None):
    return x


def _launcher_without_wrapper(x):
    return x


def test_moved_launcher_is_named():
    from utils.verify.triton_cpu import TritonAPIError, _check_launcher

    module = types.ModuleType("spikingjelly._ops.lif.triton")
    with pytest.raises(TritonAPIError, match=r"spikingjelly\._ops\.lif\.triton\._forward_impl is gone"):
        _check_launcher(module, "_forward_impl")
    module._forward_impl = _launcher_without_wrapper
    with pytest.raises(TritonAPIError, match="takes no _kernel_wrapper"):
        _check_launcher(module, "_forward_impl")
    module._forward_impl = _launcher_without_guard
    with pytest.raises(TritonAPIError, match=r"no longer contains the device guard `torch\._check\(`"):
        _check_launcher(module, "_forward_impl")


def test_compiled_kernels_refuse_cpu_tensors_with_the_fix():
    from utils.verify.triton_cpu import TritonKernels

    kernels = TritonKernels("lif", *(lambda *a: None,) * 4, interpreted=False)
    assert kernels.launchers(torch.device("cuda"))[0] is kernels.forward
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.launchers(torch.device("cpu"))
