"""Assertions shared by the model test modules, and skips for what a fresh machine may lack."""
import pytest
import torch

from models import reset_net


@torch.no_grad()
def assert_batch_invariant(model: torch.nn.Module, x: torch.Tensor, index: int = 3) -> None:
    """Eval logits of ``x[index]`` are the same alone and inside the batch (a bug class reported against QKFormer).

    Every BatchNorm bias is set to 1 first so that every layer (attention included) fires and the
    comparison is not void.
    """
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.constant_(m.bias, 1.0)
    batch = model(x)
    reset_net(model)
    alone = model(x[index:index + 1])
    reset_net(model)
    assert batch.std(0).max() > 0, "all samples give the same logits: the comparison would be void"
    torch.testing.assert_close(alone[0], batch[index], atol=1e-6, rtol=0)


def require_cpp_compiler() -> None:
    """Skip the calling test where torch.compile cannot build CPU kernels (no C++ compiler, e.g. a slim image)."""
    from utils.training.fastpath import cpp_compiler

    if cpp_compiler() is None:
        pytest.skip("needs a C++ compiler (g++, c++ or clang++) for torch.compile on CPU")
