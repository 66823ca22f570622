"""Golden-vector conformance: do our models compute what the published code computes?

Usage::

    python -m utils.verify.conformance tests/data/golden/case*.pt [--threads 2] [--verbose] [--neuron-impl IMPL]

Each FILE is a golden dict (format: ``tests/data/golden/README.md``). Its ``model_ctor``
(``folder/module.py::Name`` of the published code) selects a builder from the
``REFERENCE_CTORS`` table of :mod:`models.published`; the builder turns the file's ``kwargs`` into our model. We then
load the reference ``state_dict`` and repeat the published procedure: eval forward, reload,
train forward, mean cross-entropy backward. Tolerances (golden README):

* logits: ``allclose(atol=1e-5, rtol=1e-4)`` in eval and train mode;
* gradients: per tensor ``allclose(rtol=1e-4, atol=1e-5 * G)``, ``G`` = max |ref grad|.

One line per file with the max deviations and PASS/FAIL; exit status 0 only if all pass.
``--neuron-impl`` runs every neuron through one implementation of :mod:`models.neurons`
(``triton``: spikingjelly's Triton kernels, in Triton's interpreter on these CPU tensors).

Extending it (no edit here): add ``{ctor: builder}`` to ``models.published.REFERENCE_CTORS``,
with ``builder(kwargs) -> model`` or ``-> (model, prepare)``. The global RNG is seeded with
the file's ``seed`` before the builder runs. ``prepare(model, golden)`` puts the model into the
reference state when the file holds no usable state_dict (e.g. weights regenerated from the
seed) and returns a :class:`Prepared` (or None). A model's ``filter_reference_state_dict(sd)``
(drop / rename published keys) is applied to the reference state_dict and gradients.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import published
from models.neurons import convert_neurons, reset_net
from models.published import Prepared  # the result type of the table's prepare hooks
from models.weights import WeightsError, read_weights
from utils.config.cli import Parser, machine_count, readable_file

__all__ = ["Prepared", "ConformanceResult", "NotGoldenError", "read_golden", "reference_ctors", "build_reference_model",
           "check_file",
           "LOGIT_ATOL", "LOGIT_RTOL", "GRAD_RTOL", "GRAD_ATOL_FRACTION", "main"]

LOGIT_ATOL, LOGIT_RTOL = 1e-5, 1e-4
GRAD_RTOL, GRAD_ATOL_FRACTION = 1e-4, 1e-5


@dataclasses.dataclass
class ConformanceResult:
    """Outcome for one golden file."""

    path: str
    ctor: str = "?"
    eval_dev: float = float("nan")
    train_dev: float = float("nan")
    grad_dev: float = float("nan")       # max |g - ref| over all compared tensors
    grad_ratio: float = float("nan")     # worst |g - ref| / (atol + rtol |ref|); <= 1 passes
    worst_grad: str = ""
    n_grads: int = 0
    loss: float = float("nan")
    ref_loss: float = float("nan")
    failures: List[str] = dataclasses.field(default_factory=list)
    checks: Dict[str, Tuple[bool, str]] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures and all(ok for ok, _ in self.checks.values())

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        parts = [f"{status}  {os.path.basename(self.path)}  [{self.ctor}]",
                 f"eval {self.eval_dev:.2e}", f"train {self.train_dev:.2e}",
                 f"grad {self.grad_dev:.2e} ({self.grad_ratio:.3f} of tol, {self.n_grads} tensors)",
                 f"loss {self.loss:.6f}/{self.ref_loss:.6f}"]
        parts += [f"{name} {'ok' if ok else 'FAIL'}" + (f" ({detail})" if detail else "")
                  for name, (ok, detail) in self.checks.items()]
        if self.failures:
            parts.append("| " + "; ".join(self.failures))
        return "  ".join(parts)


def reference_ctors() -> Dict[str, Callable]:
    """``{published ctor: builder}``: the table of :mod:`models.published` (looked up at call time)."""
    return published.REFERENCE_CTORS


def build_reference_model(ctor: str, kwargs: dict) -> Tuple[nn.Module, Optional[Callable]]:
    """Our model (and optional ``prepare`` hook) for a published constructor and its kwargs."""
    table = reference_ctors()
    if ctor not in table:
        close = difflib.get_close_matches(ctor, list(table), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no builder for reference constructor {ctor!r}.{hint} "
                         f"Known: {', '.join(sorted(table))}")
    out = table[ctor](dict(kwargs))
    if isinstance(out, tuple):
        model, prepare = out
    else:
        model, prepare = out, None
    return model, prepare


def _filter(model: nn.Module, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    hook = getattr(model, "filter_reference_state_dict", None)
    return dict(hook(dict(sd))) if callable(hook) else dict(sd)


def _reset(model: nn.Module):
    reset_net(model)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.float()).abs().max().item() if a.numel() else 0.0


GOLDEN_KEYS = ("model_ctor", "x", "targets", "y_eval", "y_train", "loss")


class NotGoldenError(ValueError):
    """A FILE that is not a golden case (a checkpoint, another file): nothing to compare with."""


def read_golden(path: str) -> dict:
    """The golden dict in ``path``, or :class:`NotGoldenError` saying what the file is instead."""
    try:
        golden = read_weights(path)
    except WeightsError as err:
        raise NotGoldenError(f"not a golden case file: {err}") from None
    missing = [k for k in GOLDEN_KEYS if not isinstance(golden, dict) or k not in golden]
    if missing:
        checkpoint = isinstance(golden, dict) and "state_dict" in golden and "model_ctor" not in golden
        raise NotGoldenError(f"{path} is {'a training checkpoint, ' if checkpoint else ''}not a golden case file "
                             f"(it has no {', '.join(missing)}). A golden case holds the published code's constructor "
                             f"(model_ctor), input, targets, logits and loss of one run (tests/data/golden/README.md), "
                             f"e.g. tests/data/golden/case1_cifar_max_former.pt")
    return golden


def check_file(path: str, verbose: bool = False, transform: Optional[Callable] = None,
               neuron_impl: Optional[str] = None) -> ConformanceResult:
    """Run the published procedure of one golden file against our model.

    ``neuron_impl`` (e.g. ``'triton'``) switches every neuron to that implementation
    (:func:`models.neurons.convert_neurons`) before the passes.

    ``transform(model, mode, x) -> model`` (optional, e.g. :func:`utils.training.fastpath.prepare_model`)
    runs each pass through a transformed model: ``mode`` is ``'infer'`` for the eval pass and
    ``'train'`` for the train pass; gradients are read from the original model's parameters.
    """
    res = _check_file(path, verbose, transform, neuron_impl)
    if res.passed or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return res
    # A spiking network turns last-bit differences of a convolution into different spikes, and the kernels
    # oneDNN picks (so their rounding) depend on the CPU's instruction set. PyTorch's own convolutions round
    # alike on every x86 CPU seen so far: a case that fails with oneDNN is run again with them.
    torch.backends.mkldnn.enabled = False
    try:
        native = _check_file(path, verbose, transform, neuron_impl)
    finally:
        torch.backends.mkldnn.enabled = True
    if native.passed:
        native.checks["kernels"] = (True, "PyTorch's native convolutions; with oneDNN's on this CPU: "
                                          + "; ".join(res.failures or ["checks failed"]))
    return native if native.passed else res


def _check_file(path: str, verbose: bool, transform: Optional[Callable], neuron_impl: Optional[str]
                ) -> ConformanceResult:
    res = ConformanceResult(path)
    golden = read_golden(path)
    res.ctor = golden["model_ctor"]
    res.ref_loss = float(golden["loss"])

    torch.manual_seed(int(golden.get("seed", 0)))
    model, prepare = build_reference_model(golden["model_ctor"], golden.get("kwargs") or {})
    if neuron_impl is not None:
        if neuron_impl == "triton":
            from utils.verify import triton_cpu  # noqa: F401  (registers neuron impl 'triton')
        convert_neurons(model, neuron_impl)
    prepared = prepare(model, golden) if prepare is not None else None
    prepared = prepared or Prepared()
    res.checks.update(prepared.checks)

    ref_sd = prepared.state_dict if prepared.state_dict is not None else golden.get("state_dict")
    if ref_sd is None:
        if prepare is None:
            res.failures.append("file has no state_dict and the builder supplies no prepare() hook")
            return res
        ref_sd = {k: v.clone() for k, v in model.state_dict().items()}
    ref_sd = _filter(model, ref_sd)
    try:
        model.load_state_dict(ref_sd, strict=True)
    except RuntimeError as err:
        res.failures.append(f"state_dict does not load: {str(err).splitlines()[0]} ...")
        if verbose:
            print(err, file=sys.stderr)
        return res

    x, targets = golden["x"], golden["targets"]
    # eval pass
    model.eval()
    _reset(model)
    run = transform(model, "infer", x) if transform is not None else model
    with torch.no_grad():
        y_eval = run(x)
    _reset(run)
    res.eval_dev = _max_abs(y_eval, golden["y_eval"])
    if y_eval.shape != golden["y_eval"].shape or not torch.allclose(
            y_eval.float().cpu(), golden["y_eval"].float(), atol=LOGIT_ATOL, rtol=LOGIT_RTOL):
        res.failures.append("eval logits differ")

    # train pass (BN batch statistics) and gradients
    model.load_state_dict(ref_sd, strict=True)
    model.train()
    _reset(model)
    model.zero_grad(set_to_none=True)
    run = transform(model, "train", x) if transform is not None else model
    y_train = run(x)
    loss = F.cross_entropy(y_train, targets)
    loss.backward()
    _reset(run)
    res.loss = loss.item()
    res.train_dev = _max_abs(y_train, golden["y_train"])
    if y_train.shape != golden["y_train"].shape or not torch.allclose(
            y_train.detach().float().cpu(), golden["y_train"].float(), atol=LOGIT_ATOL, rtol=LOGIT_RTOL):
        res.failures.append("train logits differ")

    _compare_grads(model, golden, res, verbose)
    return res


def _compare_grads(model: nn.Module, golden: dict, res: ConformanceResult, verbose: bool):
    all_ref = golden.get("grads") or {}
    if not all_ref:
        res.failures.append("file holds no gradients")
        return
    G = max(g.abs().max().item() for g in all_ref.values() if g.numel())
    atol = GRAD_ATOL_FRACTION * G
    ref = _filter(model, all_ref)
    ours = dict(model.named_parameters())
    partial = bool(golden.get("grads_partial"))
    missing = [k for k in ours if k not in ref]
    unexpected = [k for k in ref if k not in ours]
    if unexpected or (missing and not partial):
        res.failures.append(f"gradient names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    res.grad_dev, res.grad_ratio, bad = 0.0, 0.0, []
    for name, r in ref.items():
        if name not in ours:
            continue
        p = ours[name]
        g = (p.grad if p.grad is not None else torch.zeros_like(p)).cpu()
        if g.shape != r.shape:
            bad.append(f"{name} shape {tuple(g.shape)} vs {tuple(r.shape)}")
            continue
        diff = (g.float() - r.float()).abs()
        ratio = (diff / (atol + GRAD_RTOL * r.float().abs())).max().item() if r.numel() else 0.0
        res.n_grads += 1
        if diff.numel() and diff.max().item() > res.grad_dev:
            res.grad_dev = diff.max().item()
        if ratio > res.grad_ratio:
            res.grad_ratio, res.worst_grad = ratio, name
        if ratio > 1.0:
            bad.append(name)
        if verbose:
            print(f"    {name:60s} max|d| {diff.max().item() if diff.numel() else 0:.2e}  ratio {ratio:.3f}",
                  file=sys.stderr)
    if bad:
        res.failures.append(f"{len(bad)} gradient(s) out of tolerance, worst {res.worst_grad} "
                            f"({res.grad_ratio:.2f}x tol): {bad[:5]}")


def build_parser() -> argparse.ArgumentParser:
    """``python -m utils.verify.conformance FILE ...``."""
    parser = Parser(prog="python -m utils.verify.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE", type=readable_file, help="golden .pt files")
    parser.add_argument("--threads", type=machine_count(), default=None,
                        help="torch CPU threads (the golden files were made with 2)")
    parser.add_bool("--verbose", help="per-tensor gradient deviations on stderr")
    parser.add_argument("--neuron-impl", default=None, choices=("spikingjelly", "torch", "triton"),
                        help="run every neuron through this implementation (default: the model's, spikingjelly); "
                        "triton: spikingjelly's Triton kernels in Triton's interpreter (sets TRITON_INTERPRET=1)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.neuron_impl == "triton":
        # the golden passes run on CPU tensors: the kernels must be imported (lazily, at the first
        # neuron call) in interpreter mode
        os.environ["TRITON_INTERPRET"] = "1"
    all_ok = True
    for path in args.files:
        try:
            res = check_file(path, verbose=args.verbose, neuron_impl=args.neuron_impl)
        except NotGoldenError as err:
            print(f"error: {err}", flush=True)
            all_ok = False
            continue
        except Exception as err:  # one bad file must not hide the others
            res = ConformanceResult(path)
            res.failures.append(f"{type(err).__name__}: {err}")
        print(res.line(), flush=True)
        all_ok &= res.passed
    return 0 if all_ok else 1


if __name__ == "__main__":
    from utils.config.cli import run_main

    sys.exit(run_main(main))
