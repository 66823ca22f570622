"""Launchers: valid bash, callable from any directory, forward every extra argument to train.py/validate.py."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ["cifar10-100/run.sh", "event/run.sh", "imagenet/train.sh", "imagenet/test.sh",
             "imagenet/checkpoints/download.sh"]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def fake_python(tmp_path):
    """A stand-in interpreter that records its cwd and argv, one line per call."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fakepython"
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD|$*" >> "{log}"\n')
    fake.chmod(0o755)
    return str(fake), log


def _run(script, fake, env_extra, *args, cwd="/"):
    env = dict(os.environ, PYTHON=fake, **env_extra)
    r = subprocess.run(["bash", os.path.join(ROOT, script), *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _calls(log):
    return [line.split("|", 1) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("script,env,expect", [
    ("cifar10-100/run.sh", {},
     ["train.py -c {root}/cifar10-100/cifar100.yaml", "train.py -c {root}/cifar10-100/cifar10.yaml"]),
    ("cifar10-100/run.sh", {"NPROC": "2", "DATASETS": "cifar10"},
     ["-m torch.distributed.run --standalone --nproc_per_node 2 train.py -c {root}/cifar10-100/cifar10.yaml"]),
    ("event/run.sh", {"CONFIG": "dvsgesture"}, ["train.py -c {root}/event/dvsgesture.yaml"]),
    ("imagenet/train.sh", {"GPUS": "4"},
     ["-m torch.distributed.run --standalone --nproc_per_node 4 train.py -c {root}/imagenet/10_768_t4.yaml"]),
    ("imagenet/train.sh", {"GPUS": "4", "NNODES": "2", "RDZV_HOST": "10.1.2.3", "RUN_ID": "r1"},
     ["-m torch.distributed.run --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint 10.1.2.3:29400 "
      "--rdzv-id r1 --max-restarts 3 train.py -c {root}/imagenet/10_768_t4.yaml"]),
    ("imagenet/train.sh", {"NNODES": "2", "RDZV_HOST": "n0", "SLURM_JOB_ID": "77", "LOCAL_ADDR": "10.0.0.2",
                           "NODE_RANK": "0", "MAX_RESTARTS": "1"},
     ["-m torch.distributed.run --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint n0:29400 "
      "--rdzv-id 77 --max-restarts 1 --local-addr 10.0.0.2 --rdzv-conf is_host=1 train.py"]),
    ("imagenet/test.sh", {"CONFIG": "10_512_t1", "CKPT": "/w/10-512-T1.pth.tar"},
     ["validate.py -c {root}/imagenet/10_512_t1.yaml --checkpoint /w/10-512-T1.pth.tar"]),
])
def test_launcher_forwards_args_from_any_directory(fake_python, script, env, expect):
    fake, log = fake_python
    _run(script, fake, env, "--epochs", "3", "--model-kwargs", "embed_dims=64", cwd="/")
    calls = _calls(log)
    assert len(calls) == len(expect)
    for (cwd, argv), want in zip(calls, expect):
        assert cwd == ROOT  # runs from the repo root whatever the caller's directory
        assert argv.startswith(want.format(root=ROOT)), argv
        assert argv.endswith("--epochs 3 --model-kwargs embed_dims=64"), argv
        config = argv.split(" -c ", 1)[1].split()[0]
        assert os.path.isfile(config), config


def test_download_failure_names_the_url_and_keeps_nothing_partial(tmp_path):
    """Offline, download.sh says which URL failed and why, and leaves no .part file behind."""
    script = tmp_path / "checkpoints" / "download.sh"
    script.parent.mkdir()
    script.write_text(open(os.path.join(ROOT, "imagenet/checkpoints/download.sh")).read())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"  # writes a few bytes, then fails as curl does without a network
    curl.write_text('#!/usr/bin/env bash\nwhile [ "$1" != -o ]; do shift; done\necho partial > "$2"\n'
                    'echo "curl: (6) Could not resolve host: github.com" >&2\nexit 6\n')
    curl.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(script), "10-768-T4"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "could not download https://github.com/bic-L/MaxFormer/releases/download/checkpoints/10-768-T4.pth.tar" \
        in r.stderr and "curl exit status 6" in r.stderr and "Could not resolve host" in r.stderr
    assert sorted(p.name for p in script.parent.iterdir()) == ["download.sh"]
    r = subprocess.run(["bash", str(script), "10-768-T9"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no released checkpoint '10-768-T9'" in r.stderr


def test_multinode_launch_needs_the_rendezvous_host_and_id(fake_python):
    fake, log = fake_python
    env = dict(os.environ, PYTHON=fake, NNODES="2")
    env.pop("SLURM_JOB_ID", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "imagenet/train.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "needs RDZV_HOST" in r.stderr and "RUN_ID" in r.stderr
    assert not log.exists()
