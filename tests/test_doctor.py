"""GPU preflight (utils.training.preflight, shown by utils.tools.doctor), no silent CPU fallback, and the fast GPU
defaults, all checked on a CPU machine; the doctor says "ready" exactly when train.py starts."""
import os

import pytest
import torch

import train
from utils.training import cuda_env
from utils.tools import doctor
from utils.training import preflight
from utils.training.determinism import apply_determinism, resolve_deterministic
from utils.training.distributed import resolve_device
from utils.training.threads import loader_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "demo", "digits.yaml")
IMAGENET = os.path.join(ROOT, "imagenet", "10_768_t4.yaml")
ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130


@pytest.mark.parametrize("capability,supported", [
    ((9, 0), True),     # H100 / H200
    ((8, 9), True),     # L4: the sm_86 binary runs on sm_89
    ((10, 3), True),
    ((7, 0), False),    # V100
    ((6, 1), False),
])
def test_architecture_support_follows_cuda_binary_compatibility(capability, supported):
    assert cuda_env.arch_supported(capability, ARCHES) is supported
    assert cuda_env.arch_supported((7, 0), ["sm_80", "compute_70"])  # PTX is compiled for newer GPUs
    assert not cuda_env.arch_supported((8, 0), ["sm_86"])  # a binary does not run on an older minor


def _machine(monkeypatch, build="13.0", driver=(13, 0), gpus=()):
    """Pretend this machine has a torch build for CUDA ``build``, a driver and GPUs of the given capabilities."""
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(cuda_env, "driver_cuda_version", lambda: driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ARCHES)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: gpus[i or 0])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100" if gpus[i or 0] < (7, 5) else "H200")


@pytest.mark.parametrize("machine,needles", [
    (dict(build=None), ["built without CUDA"]),
    (dict(driver=None), ["no NVIDIA driver", "580 or newer"]),
    (dict(driver=(12, 4)), ["driver is too old", "CUDA 12.4", "needs CUDA 13.x"]),
    (dict(gpus=()), ["no CUDA device is visible"]),
    (dict(gpus=[(7, 0)]), ["Tesla V100", "sm_70", "does not support"]),
])
def test_cuda_problem_names_the_cause_and_the_cpu_way_out(monkeypatch, machine, needles):
    _machine(monkeypatch, **machine)
    problem = cuda_env.cuda_problem()
    assert problem is not None and "--device cpu" in problem
    for needle in needles:
        assert needle in problem
    with pytest.raises(RuntimeError, match="CUDA is unusable.*--device cpu"):
        resolve_device("cuda")


def test_usable_gpu_passes_and_auto_picks_it(monkeypatch):
    _machine(monkeypatch, gpus=[(9, 0), (9, 0)])
    assert cuda_env.cuda_problem() is None
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    _machine(monkeypatch, gpus=[(9, 0), (7, 0)])  # only the GPU a process uses must be supported
    assert cuda_env.cuda_problem(0) is None and "sm_70" in cuda_env.cuda_problem(1)


def test_auto_falls_back_to_cpu_with_one_warning_line_only_when_torch_has_cuda(monkeypatch, capsys):
    _machine(monkeypatch, driver=None)
    assert resolve_device("auto") == torch.device("cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: device auto: running on the CPU") and "driver" in err
    _machine(monkeypatch, build=None)
    assert resolve_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_doctor_exit_codes_on_this_machine(monkeypatch, capsys, tmp_path):
    _machine(monkeypatch, driver=None)
    assert doctor.main(["-c", IMAGENET, "--output", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  driver" in out and "CUDA 13.x" in out and "--device cpu" in out and "NOT READY" in out
    assert "memory" in out and "neurons" in out and "FAIL  data" in out  # every line is printed
    assert doctor.main(["-c", DIGITS, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS  data      digits" in out and "lif: torch on cpu" in out
    assert out.rstrip().endswith("ready")


def test_doctor_memory_line_compares_the_plan_with_free_memory(monkeypatch):

    cfg = preflight.parse_run_config(["-c", DIGITS])
    monkeypatch.setattr(preflight.memory_plan, "plan_memory", lambda c: 20 * 2**30)
    _machine(monkeypatch, gpus=[(9, 0)])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (16 * 2**30, 80 * 2**30))
    check = preflight._check_memory(cfg, True, 0)
    assert check.status == "FAIL" and "plan 20.0 GiB" in check.detail and "--batch-size" in check.fix
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (60 * 2**30, 80 * 2**30))
    assert preflight._check_memory(cfg, True, 0).status == "PASS"


def test_doctor_memory_on_cpu_is_the_plan_against_host_memory(monkeypatch):
    cfg = preflight.parse_run_config(["-c", DIGITS, "--device", "cpu"])
    monkeypatch.setattr(preflight.memory_plan, "plan_memory", lambda c: 131 * 2**30)
    monkeypatch.setattr(preflight, "host_memory", lambda: (18 * 2**30, 23 * 2**30))
    check = preflight._check_memory(cfg, False, 0)
    assert check.status == "FAIL" and "plan 131.0 GiB" in check.detail
    assert "18.0 of 23.0 GiB of host memory" in check.detail
    monkeypatch.setattr(preflight.memory_plan, "plan_memory", lambda c: 2**30)
    assert preflight._check_memory(cfg, False, 0).status == "PASS"
    available, total = preflight.host_memory()  # this machine's, read for real
    assert 0 < available <= total


def test_doctor_help_is_an_argparse_usage(capsys):
    assert doctor.main(["-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m utils.tools.doctor [-h] [-c CONFIG] [--key value ...]")
    assert "--batch-size" in out and "--amp" in out and "Exit status: 0 ready" in out


@pytest.mark.parametrize("extra,needle", [
    (["--amp", "fp16", "--device", "cpu"], "FAIL  amp       amp fp16 needs a CUDA device"),
    (["--eval-amp", "fp16", "--device", "cpu"], "FAIL  amp       eval_amp fp16 needs a CUDA device"),
    (["--batch-size", "100000", "--device", "cpu"], "FAIL  data      config key 'batch_size': 100000 is larger"),
    (["--output", "FILE"], "is a file, not a folder"),
    (["--experiment", "held"], "already holds a run (summary.csv)"),
])
def test_doctor_is_not_ready_exactly_where_train_refuses_before_writing(monkeypatch, tmp_path, capsys, extra, needle):
    monkeypatch.setattr(preflight.memory_plan, "plan_memory", lambda c: 2**20)  # the subject is the refusal
    (tmp_path / "FILE").write_text("mine")
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "summary.csv").write_text("epoch\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = ["-c", DIGITS, "--output", str(tmp_path), "--epochs", "1", "--device", "cpu",
            *[str(tmp_path / a) if a == "FILE" else a for a in extra]]
    assert doctor.main(args) == 1
    out = capsys.readouterr().out
    assert needle in out and out.rstrip().endswith("failed")
    assert train.main(args) == 2
    assert needle.split("  ")[-1].strip() in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written: no run.lock, no status.json
    assert (tmp_path / "FILE").read_text() == "mine"
    assert doctor.main(["-c", DIGITS, "--output", str(tmp_path / "fresh"), "--device", "cpu"]) == 0


def test_compiler_is_required_on_cuda_and_optional_on_cpu(monkeypatch):
    cfg = preflight.parse_run_config(["-c", DIGITS, "--fastpath", "false"])
    monkeypatch.setattr(preflight, "_c_compiler", lambda: None)
    cuda = preflight._check_compiler(cfg, cuda=True)
    assert cuda.status == "FAIL" and "Triton" in cuda.detail and "gcc" in cuda.fix
    assert preflight._check_compiler(cfg, cuda=False).status == "PASS"
    cfg.fastpath = True
    assert preflight._check_compiler(cfg, cuda=False).status == "WARN"


def test_neuron_kernel_follows_spikingjelly_selection(monkeypatch):
    assert preflight.neuron_kernel("lif", "cpu") == "torch"
    assert preflight.neuron_kernel("if", "cuda", fastpath=True) == "torch"
    _machine(monkeypatch, driver=None)  # no GPU here: the PyPI wheel has no compiled CUDA part -> Triton
    assert preflight.neuron_kernel("lif", "cuda") == "triton"


def test_imagenet_run_stops_at_once_naming_cuda_before_writing(monkeypatch, tmp_path, capsys):
    _machine(monkeypatch, driver=None)
    rc = train.main(["-c", IMAGENET, "--dataset", "synthetic", "--output", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "device 'cuda' requested but CUDA is unusable: no NVIDIA driver" in err and "--device cpu" in err
    assert list(tmp_path.iterdir()) == []


def test_deterministic_is_the_reproducibility_switch():
    assert preflight.parse_run_config(["-c", DIGITS]).deterministic is None  # auto
    cfg = preflight.parse_run_config(["-c", IMAGENET])
    assert cfg.deterministic is False and cfg.device == "cuda" and cfg.workers is None
    assert resolve_deterministic(None, "cpu") is True and resolve_deterministic(None, "cuda:0") is False
    assert resolve_deterministic(True, "cuda") is True and resolve_deterministic(False, "cpu") is False
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        apply_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # TF32 for fp32
        apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]


def test_loader_workers_follow_the_cores_per_process():
    assert loader_workers("cuda", 8, cpus=96) == 11  # one core of each share feeds its GPU
    assert loader_workers("cuda", 1, cpus=128) == 16
    assert loader_workers("cpu", 1, cpus=2) == 1 and loader_workers("cpu", 1, cpus=1) == 0
    assert loader_workers("cpu", 1, cpus=64) == 4


def test_ddp_wraps_before_compile(monkeypatch):
    """DDP first, then compile the inner module: its first compiled call runs inside DDP's forward, where dynamo
    splits the graph at gradient buckets so all-reduce overlaps backward."""
    import torch.distributed as dist

    import tests.tiny_models  # noqa: F401  (registers tiny_spiking_test)
    from utils.training import engine, fastpath

    events = []
    real_compile, real_ddp = fastpath.compile_model, torch.nn.parallel.DistributedDataParallel

    def compile_model(model, scope):
        events.append(("compile", scope))
        return real_compile(model, scope)

    def ddp(model, **kw):
        events.append(("ddp", None))
        return real_ddp(model, **kw)

    monkeypatch.setattr(fastpath, "compile_model", compile_model)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    cfg = preflight.parse_run_config(["-c", DIGITS, "--model", "tiny_spiking_test", "--model-kwargs", "none", "width=8",
                        "--T", "1", "--amp", "bf16", "--fastpath", "true", "--compile", "true", "--sched", "none"])
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = engine.build_model(cfg, 10)
        t = engine.build_training(cfg, model, torch.device("cpu"), world_size=2, train_batches=4)
    finally:
        dist.destroy_process_group()
    assert events == [("ddp", None), ("compile", "model")]
    assert isinstance(t.model, real_ddp) and t.model.module is model and t.eval_model is model
    assert model._compiled_call_impl is not None and t.fastpath.compile == "model"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA answer")
def test_gpu_check_script_says_in_one_line_that_there_is_no_cuda():
    import subprocess
    import sys

    script = os.path.join(ROOT, "bench", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    env = dict(os.environ, PY=sys.executable, OMP_NUM_THREADS="1", LOG="/dev/null")
    r = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stderr == ""
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("gpu_check: no usable CUDA device, nothing checked: ")


def test_train_stops_before_writing_when_triton_cannot_build(monkeypatch, tmp_path):
    import types

    from utils.config import ConfigError

    _machine(monkeypatch, gpus=[(9, 0)])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(name="H200",
                                                                                               total_memory=2**37))
    monkeypatch.setattr(preflight, "_c_compiler", lambda: None)
    cfg = preflight.parse_run_config(["-c", IMAGENET, "--dataset", "synthetic", "--output", str(tmp_path)])
    lines = [c.line() for c in preflight.start_checks(cfg, torch.device("cuda", 0))]
    assert any(x.startswith("PASS  gpu       0: H200, sm_90, 128.0 GiB, supported") for x in lines), lines
    with pytest.raises(ConfigError, match="preflight: compiler: missing a C compiler.*fix: install gcc"):
        train.run(cfg)
    assert list(tmp_path.iterdir()) == []
