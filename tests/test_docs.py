"""The docs run as written: every shell command in README.md and docs/*.md that runs on a CPU without data.

Each fenced ``bash`` block is run in order in its own temporary folder that links the repository's files (so
``output/`` lands there), with ``python`` meaning this interpreter. A command not covered by a row of
:data:`EXCEPTIONS` runs by default (a new doc command is checked without editing this file): as written, or with
the tiny settings of :data:`TINY` appended for its entry point, so that every flag it passes is parsed and
used. It must exit 0 (or the status its "exit:N" row documents) with no traceback, and no command may write
into the repository's own files. The rows say why a command is skipped (cluster, data, network, a file the
reader supplies, the suite itself) or only parsed by its entry point's own parser (long runs).
"""
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```", re.S | re.M)

# The exceptions, one table: the first row whose pattern matches a command decides. "skip": not run here, for
# the reason given; "parse": the command line is parsed by the entry point's own parser in this process (every
# flag, value and config check), not run, for the reason given; "exit:N": it runs and must exit with status N.
# Any other command runs (see TINY) and must exit 0.
EXCEPTIONS = [
    (r"\b(torchrun|srun|sbatch|salloc|scontrol|squeue)\b|--nnodes|\bGPUS=|\bNPROC=|/scratch/"
     r"|--launcher slurm(?!.*--dry-run)|gpu_check\.sh|--device cuda", "skip", "needs GPUs or a cluster"),
    (r"^(make|pip|apt-get|hf|\.ci/)\b", "skip", "installs software or runs the whole suite (make test, CI)"),
    (r"\bpytest\b|fresh_machine\.sh|tests\.triton_cases|TRITON_INTERPRET", "skip", "part of the test suite (tests/)"),
    (r"download\.sh|--download\b|--pretrained\b|\.t[14]_in1k\b|huggingface_hub", "skip",
     "needs the network (released weights, datasets)"),
    (r"run_all\.sh(?!.*--dry-run)|imagenet/\w+\.sh|cifar10-100/run\.sh|event/run\.sh|prepare_data|\bCKPT=|--images\b",
     "skip", "needs a dataset that is not in the tree"),
    (r"ckpt\.pth|imagenet/checkpoints/|old\.pth\.tar|path/to/|\s\.\.\.(\s|$)|<\w+>|\bORG/", "skip",
     "needs a file the reader supplies"),
    (r"utils\.verify\.conformance .*\*", "skip", "long (every golden case); tests/test_conformance.py runs it"),
    (r"^python (train|validate)\.py (?!.*-c demo/)", "parse",
     "needs a dataset or minutes of CPU (the digits configs run for real)"),
    (r"^python -m utils\.analysis\.(energy|frequency)\b", "parse",
     "builds full-size models (tens of seconds each); tests/test_energy.py and test_frequency.py run the CLI"),
    (r"^python benchmark\.py\b", "parse", "timed runs; tests/test_benchmark.py runs the CLI"),
    (r"^python -m utils\.analysis\.tables( params\b|\s*$| --)", "parse",
     "builds every model of the zoo (tens of seconds); tests/test_tables.py runs it"),
]


def _parsers():
    """Entry point -> a function that parses its argv as the entry point does (raises on a bad command line)."""
    import benchmark
    import validate
    from utils.analysis import energy, frequency, tables
    from utils.config import parse_config

    return {"train.py": parse_config, "validate.py": lambda argv: parse_config(argv, extra=validate.VALIDATE_OPTIONS),
            "benchmark.py": lambda argv: benchmark.build_parser().parse_args(argv),
            "utils.analysis.energy": lambda argv: energy.build_parser().parse_args(argv),
            "utils.analysis.frequency": lambda argv: frequency.build_parser().parse_args(argv),
            "utils.analysis.tables": lambda argv: tables.build_parser().parse_args(argv)}


# Appended to a command of the entry point (after `--` for a sweep) so that it runs in seconds.
_TRAIN_TINY = ("--epochs 1 --warmup-epochs 0 --cooldown-epochs 0 --max-train-batches 1 --max-eval-batches 1 "
               "--batch-size 4 --val-batch-size 4 --workers 0 --no-fastpath --amp none")
TINY = {
    "train.py": _TRAIN_TINY,
    "validate.py": "--max-eval-batches 1 --val-batch-size 4 --workers 0 --no-fastpath --amp none",
    "utils.tools.sweep": _TRAIN_TINY,
    "benchmark.py": "--smoke --steps 1 --warmup 1",
}
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


def exception(command: str):
    """``(action, reason)`` of the first row of :data:`EXCEPTIONS` that matches, or ``(None, None)``: it runs."""
    for pattern, action, reason in EXCEPTIONS:
        if re.search(pattern, command):
            return action, reason
    return None, None


def why_not_run(command: str):
    """The reason a command is skipped, or None."""
    action, reason = exception(command)
    return reason if action == "skip" else None


def split_entry(command: str):
    """``(entry point, argv)`` of ``python X.py ARGS`` or ``python -m MODULE ARGS``."""
    words = shlex.split(command)
    i = 2 if words[1] == "-m" else 1
    return words[i], words[i + 1:]


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
        if entry.name not in {"output", ".git", ".pytest_cache", ".venv"}:
            (work / entry.name).symlink_to(entry)
    venv = work / ".venv" / "bin"  # the docs' .venv is this interpreter, wherever the suite runs from
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(python)
    (venv / "activate").write_text(f"export PATH={shlex.quote(str(tmp / 'bin'))}:$PATH\n")
    return work


def _env(tmp: Path) -> dict:
    env = dict(os.environ, PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               RUFF_NO_CACHE="true", PYTHONDONTWRITEBYTECODE="1", USER=os.environ.get("USER", "user"))
    env.pop("PYTHONPATH", None)
    return env


def run_block(tmp: Path, where: str, commands):
    """Run one block's commands in order; a list of failure descriptions."""
    work, env, failures, unavailable = _farm(tmp), _env(tmp), [], []
    for command in commands:
        action, _ = exception(command)
        expected = int(action.split(":")[1]) if action and action.startswith("exit:") else 0
        reads = re.findall(r"output/[\w.-]+", command)
        if action == "skip":
            unavailable += reads
            continue
        if action == "parse":
            continue  # test_doc_commands_parse
        if any(r in unavailable for r in reads):
            continue  # reads what a command above, not run here, would have written
        form = runnable_form(command)
        start = time.monotonic()
        try:
            proc = subprocess.run(["bash", "-c", form], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            failures.append(f"{where}: `{form}` ran over {TIMEOUT} s")
            continue
        out = proc.stdout + proc.stderr
        print(f"{time.monotonic() - start:6.1f} s  {where}: {command[:100]}")
        if proc.returncode != expected or "Traceback (most recent call last)" in out:
            failures.append(f"{where}: `{form}` exit {proc.returncode} (expected {expected}):\n{out[-3000:]}")
    return failures


def _snapshot():
    skip = {".git", ".venv", "output", "__pycache__", ".pytest_cache", ".ruff_cache"}
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
    assert exception("python train.py -c event/cifar10dvs.yaml")[0] == "parse"
    assert exception("python train.py -c demo/digits.yaml --model-kwargs neuron=if") == (None, None)
    assert exception("bash event/ablations/run_all.sh --seeds 0") == ("skip", "needs a dataset that is not in the tree")
    assert split_entry("python -m utils.analysis.energy --model x") == ("utils.analysis.energy", ["--model", "x"])
    assert runnable_form("python train.py -h") == "python train.py -h"
    assert runnable_form("python -m utils.tools.sweep demo/digits.yaml -- --epochs 1").endswith("-- --epochs 1 "
                                                                                               + _TRAIN_TINY)
    assert list(block_commands('a \\\n  "b # c" # d\n# e\n\nf')) == ['a "b # c"', "f"]


def test_a_failing_or_crashing_command_is_reported(tmp_path):
    failures = run_block(tmp_path, "page.md:1", ['python -c "import sys; sys.exit(3)"',
                                                 'python -c "import sys; print(sys.executable)"',
                                                 "python -c \"raise SystemExit(__import__('traceback').print_stack()"
                                                 " or print('Traceback (most recent call last):'))\""])
    assert len(failures) == 2 and "exit 3 (expected 0)" in failures[0] and "Traceback" in failures[1]
    with pytest.raises(Exception, match="no_such_key"):
        _parsers()["train.py"](["-c", str(ROOT / "demo" / "digits.yaml"), "--no-such-key", "1"])


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


def test_doc_commands_parse(tmp_path, monkeypatch):
    """The commands of the "parse" rows: their entry point's own parser accepts them (config checks included)."""
    parsers, failures, checked = _parsers(), [], 0
    monkeypatch.chdir(_farm(tmp_path))
    for where, commands in shell_blocks():
        for command in commands:
            if exception(command)[0] != "parse":
                continue
            entry, argv = split_entry(command)
            checked += 1
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    parsers[entry](argv)
            except SystemExit as e:  # -h exits 0; argparse errors exit 2
                if e.code:
                    failures.append(f"{where}: `{command}`: exit {e.code}")
            except Exception as e:  # ConfigError, ModelError, ...: report them all
                failures.append(f"{where}: `{command}`: {type(e).__name__}: {e}")
    assert checked > 5
    assert not failures, "\n".join(failures)


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

