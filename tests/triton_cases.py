"""The cases of ``tests/test_triton_kernels.py``, run in a process of their own.

spikingjelly's Triton kernels run in Triton's interpreter only if ``TRITON_INTERPRET=1`` was set
before their modules were imported, so the test starts this module as a subprocess::

    TRITON_INTERPRET=1 python -m tests.triton_cases --device cpu    # the interpreter, CPU tensors
    python -m tests.triton_cases --device cuda                      # the compiled kernels on a GPU

Each case runs one multi-step neuron forward and backward with ``impl='triton'`` and with the
plain-PyTorch CPU path (``impl='torch'``) on the same input and upstream gradient, and prints one
JSON line: spikes and final state bitwise equal?, the worst gradient deviation as a fraction of
:func:`grad_tolerance`, the firing rate. Importing this module needs no Triton.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Dict, Iterator, Tuple

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESETS = {"hard": 0.0, "soft": None}
LAYOUTS = ("contiguous", "channels_last")
SHAPE = (2, 8, 5, 6)  # [B, C, H, W] per time step: 480 neurons, one interpreter program instance
GRAD_RTOL, GRAD_ATOL_FRACTION = 1e-4, 1e-5  # golden tolerance (tests/data/golden/README.md)


def case_ids() -> Iterator[str]:
    for kind, dtype, reset, T, layout in itertools.product(("lif", "if"), DTYPES, RESETS, (1, 4), LAYOUTS):
        yield f"{kind}-{dtype}-{reset}-T{T}-{layout}"


def grad_tolerance(dtype: torch.dtype, max_abs_grad: float) -> Tuple[float, float]:
    """``(rtol, atol)`` for input gradients of dtype ``dtype``.

    float32: the golden tolerance. bf16/fp16: both paths compute in float32 and round once to the
    input dtype, so a few-ulp float32 difference can land one bf16/fp16 ulp apart: rtol is that ulp
    (``torch.finfo(dtype).eps``: 2**-7 for bf16, 2**-10 for fp16).
    """
    rtol = GRAD_RTOL if dtype == torch.float32 else torch.finfo(dtype).eps
    return rtol, GRAD_ATOL_FRACTION * max_abs_grad


def _inputs(case: str, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    kind, dtype, reset, T, layout = case.split("-")
    seed = sum(ord(c) for c in case)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((int(T[1:]),) + SHAPE, generator=gen) * 1.5 + 0.5
    grad = torch.randn(x.shape, generator=gen)
    if layout == "channels_last":  # channels innermost in every time step; the upstream gradient stays contiguous
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return x.to(device, DTYPES[dtype]), grad.to(device, DTYPES[dtype])


def run_case(case: str, device: str) -> Dict:
    from models.neurons import NeuronConfig
    from utils.verify import triton_cpu  # noqa: F401  (registers impl 'triton')

    kind, dtype, reset = case.split("-")[:3]
    x, grad = _inputs(case, device)
    out = {}
    for impl in ("torch", "triton"):
        xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        node = NeuronConfig(kind=kind, v_reset=RESETS[reset], impl=impl).make().to(device)
        spikes = node(xi)
        spikes.backward(grad)
        out[impl] = spikes.detach(), node.v.detach(), xi.grad
    (s_ref, v_ref, g_ref), (s, v, g) = out["torch"], out["triton"]
    rtol, atol = grad_tolerance(x.dtype, g_ref.float().abs().max().item())
    deviation = (g.float() - g_ref.float()).abs()
    return dict(case=case, device=device, spikes_equal=torch.equal(s, s_ref), v_equal=torch.equal(v, v_ref),
                spike_dtype=str(s.dtype).replace("torch.", ""), grad_dtype=str(g.dtype).replace("torch.", ""),
                grad_layout_kept=g.stride() == x.stride(), rate=s.float().mean().item(),
                grad_max_dev=deviation.max().item(), rtol=rtol,
                grad_ratio=(deviation / (atol + rtol * g_ref.float().abs())).max().item())


def kernels_info(device: str) -> Dict:
    from utils.verify.triton_cpu import load_kernels

    return dict(case="kernels", device=device, interpreted={k: load_kernels(k).interpreted for k in ("lif", "if")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.triton_cases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("cases", nargs="*", help="case ids (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for case in args.cases or case_ids():
        print(json.dumps(run_case(case, args.device)), flush=True)
    print(json.dumps(kernels_info(args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
