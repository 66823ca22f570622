"""The docs run as written: every shell command in README.md and docs/*.md that runs on a CPU without data.

Each fenced ``bash`` block is run in order in its own temporary folder that links the repository's files (so
``output/`` lands there), with ``python`` meaning this interpreter. A command not covered by a row of
:data:`NOT_RUN` runs by default (a new doc command is checked without editing this file): as written, or with
the tiny settings of :data:`TINY` appended for its entry point, so that every flag it passes is parsed and
used. It must exit 0 with no traceback, and no command may write into the repository's own files.
"""
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```", re.S | re.M)

# The exceptions, by rule: the first row whose pattern matches a command says why it is not run here.
NOT_RUN = [
    (r"\b(torchrun|srun|sbatch|salloc|scontrol|squeue)\b|--nnodes|\bGPUS=|\bNPROC=|/scratch/"
     r"|--launcher slurm(?!.*--dry-run)|gpu_check\.sh|--device cuda", "needs GPUs or a cluster"),
    (r"^(make|pip|apt-get|hf|\.ci/)\b", "installs software or runs the whole suite (make test, CI)"),
    (r"\bpytest\b|fresh_machine\.sh|tests\.triton_cases|TRITON_INTERPRET", "part of the test suite (tests/)"),
    (r"download\.sh|--download\b|--pretrained\b|\.t[14]_in1k\b|huggingface_hub",
     "needs the network (released weights, datasets)"),
    (r"\s-c (event|imagenet)/|run_all\.sh(?!.*--dry-run)|imagenet/\w+\.sh|cifar10-100/run\.sh|event/run\.sh"
     r"|prepare_data|\bCKPT=|--images\b", "needs a dataset that is not in the tree"),
    (r"ckpt\.pth|imagenet/checkpoints/|old\.pth\.tar|path/to/|\s\.\.\.(\s|$)|<\w+>|\bORG/", "needs a file the reader supplies"),
    (r"utils\.verify\.conformance .*\*", "long (every golden case); tests/test_conformance.py, test_triton_kernels.py"),
    (r"benchmark\.py .*--(sweep|peak|compare-eager)\b", "long (many timed configurations); tests/test_benchmark.py"),
]

# Appended to a command of the entry point (after `--` for a sweep) so that it runs in seconds.
_TRAIN_TINY = ("--epochs 1 --warmup-epochs 0 --cooldown-epochs 0 --max-train-batches 1 --max-eval-batches 1 "
               "--batch-size 4 --val-batch-size 4 --workers 0 --no-fastpath --amp none")
TINY = {
    "train.py": _TRAIN_TINY,
    "validate.py": "--max-eval-batches 1 --val-batch-size 4 --workers 0 --no-fastpath --amp none",
    "utils.tools.sweep": _TRAIN_TINY,
    "benchmark.py": "--smoke --steps 1 --warmup 1",
}
# CIFAR configs run on random CIFAR-shaped data: the same model and flags, no download.
SYNTHETIC = "--dataset synthetic --synthetic-size 4 4"
TIMEOUT = 300


def doc_blocks():
    """``(page, line, language, text)`` of every fenced block of README.md and docs/*.md."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            yield page.relative_to(ROOT).as_posix(), text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def block_commands(text: str):
    """The commands of a shell block: continuation lines joined, comments dropped."""
    command = ""
    for line in text.splitlines():
        line = _strip_comment(line).strip()
        if line.endswith("\\"):
            command += line[:-1].rstrip() + " "
            continue
        command = (command + line).strip()
        if command:
            yield command
        command = ""


def why_not_run(command: str):
    """The reason from :data:`NOT_RUN`, or None: the command runs here."""
    for pattern, reason in NOT_RUN:
        if re.search(pattern, command):
            return reason
    return None


def entry_point(command: str):
    for name in TINY:
        if re.search(rf"(^|\s){re.escape(name)}(\s|$)", command):
            return name
    return None


def runnable_form(command: str) -> str:
    """The command with the tiny settings of its entry point (none for ``-h``, --dry-run or --status)."""
    name = entry_point(command)
    words = shlex.split(command)
    if name is None or {"-h", "--help", "--dry-run", "--status", "--plan-memory"} & set(words):
        return command
    extra = TINY[name]
    if re.search(r"\s-c cifar10-100/", command):
        extra += " " + SYNTHETIC
    if name == "utils.tools.sweep":
        return command + (" " if " -- " in command else " -- ") + extra
    return command + " " + extra


def _farm(tmp: Path) -> Path:
    """A folder whose entries link to the repository's (output/ stays here); ``bin/python`` = this interpreter."""
    (tmp / "bin").mkdir(parents=True)
    python = tmp / "bin" / "python"  # a script, not a link: a venv's interpreter finds its packages by its path
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    work = tmp / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {"output", ".git", ".pytest_cache"}:
            (work / entry.name).symlink_to(entry)
    return work


def _env(tmp: Path) -> dict:
    env = dict(os.environ, PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1", USER=os.environ.get("USER", "user"))
    env.pop("PYTHONPATH", None)
    return env


def run_block(tmp: Path, where: str, commands):
    """Run one block's commands in order; a list of failure descriptions."""
    work, env, failures, unavailable = _farm(tmp), _env(tmp), [], []
    for command in commands:
        reason = why_not_run(command)
        reads = re.findall(r"output/[\w.-]+", command)
        if reason:
            unavailable += reads
            continue
        if any(r in unavailable for r in reads):
            continue  # reads what a command above, not run here, would have written
        form = runnable_form(command)
        try:
            proc = subprocess.run(["bash", "-c", form], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            failures.append(f"{where}: `{form}` ran over {TIMEOUT} s")
            continue
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Traceback (most recent call last)" in out:
            failures.append(f"{where}: `{form}` exit {proc.returncode}:\n{out[-3000:]}")
    return failures


def _snapshot():
    skip = {".git", ".venv", "output", "__pycache__", ".pytest_cache"}
    state = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for f in files:
            st = os.stat(os.path.join(folder, f))
            state[os.path.relpath(os.path.join(folder, f), ROOT)] = (st.st_mtime_ns, st.st_size)
    return state


def shell_blocks():
    return [(f"{page}:{line}", list(block_commands(text))) for page, line, lang, text in doc_blocks()
            if lang in SHELL]


def test_every_fenced_block_names_its_language():
    untagged = [f"{page}:{line}" for page, line, lang, _ in doc_blocks() if not lang]
    assert not untagged, f"tag these blocks (bash for commands, text for trees and output): {untagged}"


def test_rules_classify_commands_as_intended():
    assert why_not_run("torchrun --standalone --nproc_per_node 8 train.py -c x.yaml") == "needs GPUs or a cluster"
    assert why_not_run("python train.py -c demo/digits.yaml --nnodes 2") == "needs GPUs or a cluster"
    assert why_not_run("python -m utils.tools.sweep a.yaml --launcher slurm --dry-run") is None
    assert why_not_run("python train.py -c event/cifar10dvs.yaml") == "needs a dataset that is not in the tree"
    assert why_not_run("python train.py -c cifar10-100/cifar10.yaml --model max_resnet18") is None
    assert runnable_form("python train.py -h") == "python train.py -h"
    assert runnable_form("python -m utils.tools.sweep demo/digits.yaml -- --epochs 1").endswith("-- --epochs 1 "
                                                                                               + _TRAIN_TINY)
    assert SYNTHETIC in runnable_form("python train.py -c cifar10-100/cifar100.yaml")
    assert list(block_commands('a \\\n  "b # c" # d\n# e\n\nf')) == ['a "b # c"', "f"]


def test_the_smoke_overrides_fit_every_config_they_are_documented_for():
    """docs/reproducing.md's short runs pass train.py's config checks for every event and CIFAR config."""
    from utils.config import parse_config

    smoke = next(c for where, cmds in shell_blocks() for c in cmds
                 if where.startswith("docs/reproducing.md") and "run_all.sh" in c and " -- " in c)
    overrides = shlex.split(smoke.split(" -- ", 1)[1])
    configs = sorted((ROOT / "event").glob("**/*.yaml")) + sorted((ROOT / "cifar10-100").glob("**/*.yaml"))
    assert len(configs) > 30
    for config in configs:
        cfg = parse_config(["-c", str(config), *overrides])
        assert cfg.epochs + cfg.cooldown_epochs <= 2 and cfg.warmup_epochs == 0, config


def test_doc_commands_run_as_written(tmp_path):
    blocks = shell_blocks()
    assert len(blocks) > 15
    before = _snapshot()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda ib: run_block(tmp_path / str(ib[0]), *ib[1]), enumerate(blocks)))
    failures = [f for r in results for f in r]
    changed = sorted(k for k, v in _snapshot().items() if before.get(k) != v)
    assert not changed, f"doc commands wrote into the repository's own files: {changed}"
    assert not failures, "\n\n".join(failures)

