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


@pytest.mark.parametrize("eval_amp, want", [("same", torch.bfloat16), ("none", torch.float32),
                                            ("bf16", torch.bfloat16)])
def test_the_evaluation_runs_at_the_eval_amp_precision(eval_amp, want):
    from utils.config import parse_config
    from utils.training.engine import build_training, evaluate

    class Probe(nn.Linear):  # records the dtype its matmul ran in
        def forward(self, x):
            out = super().forward(x.flatten(1))
            self.seen.append(out.dtype)
            return out

    amp = "none" if eval_amp == "bf16" else "bf16"
    cfg = parse_config(["--amp", amp, "--eval-amp", eval_amp, "--no-fastpath", "--device", "cpu"])
    model = Probe(12, 3)
    model.seen = []
    t = build_training(cfg, model, torch.device("cpu"), world_size=1, train_batches=1)
    evaluate(t.eval_model, [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))], device=torch.device("cpu"),
             autocast=t.eval_autocast)
    with t.autocast():
        model(torch.randn(4, 12))
    assert model.seen == [want, torch.bfloat16 if amp == "bf16" else torch.float32]


def test_eval_amp_fp16_on_a_cpu_names_its_own_key():
    from utils.config import ConfigError, parse_config
    from utils.training.engine import build_training

    cfg = parse_config(["--eval-amp", "fp16", "--no-fastpath", "--device", "cpu"])
    with pytest.raises(ConfigError, match="eval_amp fp16 needs a CUDA device; on CPU use --eval-amp bf16"):
        build_training(cfg, nn.Linear(2, 2), torch.device("cpu"), world_size=1, train_batches=1)
