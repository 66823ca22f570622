"""Preflight: can this machine start this run? ``python -m utils.tools.doctor -c CONFIG [--key value ...]``.

Takes train.py's arguments and prints one line per check (PASS / WARN / FAIL; every FAIL names the fix); exits 0
only if the run can start. The checks are train.py's own (``utils.training.preflight``): the run folder and the
checkpoints it reads, the torch build and its CUDA version, the NVIDIA driver, each visible GPU and whether the
build has kernels for it, the C compiler, mixed precision on the device, the data and the batch size; then the
memory plan against free device memory (host memory on CPU) and the neuron kernel that will run.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from utils.config import ConfigError, all_options, build_arg_parser
from utils.training.cuda_env import wants_cuda
from utils.training.preflight import parse_run_config, run_checks

__all__ = ["build_parser", "main"]

PROG = "python -m utils.tools.doctor"


def build_parser():
    """The command line of the doctor: train.py's (it checks a training config)."""
    p = build_arg_parser(all_options(), __doc__.split("\n\n")[1].replace("``", ""))
    p.prog = PROG
    p.usage = f"{PROG} [-h] [-c CONFIG] [--key value ...]"
    p.epilog = "Exit status: 0 ready, 1 not ready, 2 a bad argument or config."
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return 0
    try:
        cfg = parse_run_config(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    requested = cfg.device
    cuda = wants_cuda(requested)
    print(f"preflight for {cfg.config or 'the default config'}: {cfg.model}, dataset {cfg.dataset}, device "
          f"{requested} -> {'cuda' if cuda else 'cpu'}")
    checks = run_checks(cfg)
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"\n{'NOT READY: ' + ', '.join(failed) + ' failed' if failed else 'ready'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
