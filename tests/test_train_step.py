"""``utils.training.engine.train_step`` and ``train_one_epoch`` on their own: accumulation, clipping, the update count,
a stop request. A BatchNorm-free model, so a split batch computes what the whole one does."""
import contextlib
import copy

import pytest
import torch
import torch.nn as nn

from tests.tiny_models import TinySpikingNet
from utils.training.engine import Training, train_one_epoch, train_step


def _training(model: nn.Module, **settings) -> Training:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Training(model=model, eval_model=model, optimizer=opt, scheduler=None, scaler=None, ema=None,
                    loss_fn=nn.CrossEntropyLoss(), mixup_fn=None, autocast=contextlib.nullcontext, fastpath=None,
                    channels_last=False, lr=0.1, effective_batch=8, updates_per_epoch=1, total_epochs=1, n_params=0,
                    **settings)


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_two_accumulated_half_batches_make_the_update_of_the_whole_batch():
    torch.manual_seed(0)
    split = TinySpikingNet(T=2)
    whole = copy.deepcopy(split)
    before = _params(split).clone()
    x, y = _batch()
    t_split, t_whole = _training(split, accum_steps=2), _training(whole)
    loss = train_step(t_split, x[:4], y[:4], group=2, update=False)
    assert not loss.requires_grad and t_split.num_updates == 0 and torch.equal(_params(split), before)
    train_step(t_split, x[4:], y[4:], group=2, update=True)
    train_step(t_whole, x, y, group=1, update=True)
    assert t_split.num_updates == t_whole.num_updates == 1
    assert not torch.equal(_params(split), before)
    torch.testing.assert_close(_params(split), _params(whole), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in split.parameters())  # zeroed after the update


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_clipping_bounds_the_step(clip):
    torch.manual_seed(0)
    model = TinySpikingNet(T=2)
    before = _params(model).clone()
    train_step(_training(model, clip_grad=clip), *_batch(), group=1, update=True)
    moved = float((_params(model) - before).norm())  # SGD: lr * gradient norm
    assert (moved <= 0.1 * 1e-3 * 1.001) if clip else (moved > 0.1 * 1e-2)


def test_a_stop_request_ends_the_pass_after_an_update_with_its_position():
    torch.manual_seed(0)
    t = _training(TinySpikingNet(T=1), accum_steps=2)
    loader = [_batch(4) for _ in range(6)]
    stats = train_one_epoch(t, loader, 0, should_stop=lambda: t.num_updates == 2)
    assert stats["stopped_at"] == 4 and stats["num_updates"] == 2 and stats["error"] is None
    assert stats["loss_sum"] > 0 and stats["train_loss"] == pytest.approx(stats["loss_sum"] / 6)
