import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from latentdiff.training.ema import EMA, ema_decay_at


@pytest.mark.parametrize(
    ("step", "max_decay", "expected"),
    [(0, 0.999, 0.1), (1, 0.999, 2 / 11), (90, 0.999, 0.91), (10_000, 0.999, 0.999), (5, 0.2, 0.2)],
)
def test_decay_warms_up_to_its_maximum(step, max_decay, expected):
    assert ema_decay_at(step, max_decay) == pytest.approx(expected)


def model_with_buffer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_averages_parameters_and_copies_buffers():
    model = model_with_buffer()
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model, step=100)  # decay = min(0.5, 101/110) = 0.5
    current = model.state_dict()
    for name, _ in model.named_parameters():
        assert_close(ema.state_dict()[name], 0.5 * before[name] + 0.5 * current[name])
    assert_close(ema.state_dict()["1.running_mean"], torch.full((4,), 3.0))


def test_ema_converges_geometrically_to_fixed_weights():
    model = model_with_buffer()
    ema = EMA(model, decay=0.9)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
    for step in range(20):
        ema.update(model, step)
    # θ_ema − θ = Π d_n · (θ_ema,0 − θ) for constant θ.
    shrink = math.prod(ema_decay_at(step, 0.9) for step in range(20))
    target = model[0].weight.detach()
    assert_close(ema.module[0].weight - target, shrink * (start - target))


def test_ema_copy_is_frozen_and_independent():
    model = model_with_buffer()
    ema = EMA(model, decay=0.9)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    with torch.no_grad():
        model[0].weight.zero_()
    assert ema.module[0].weight.abs().sum() > 0


def test_state_dict_round_trip():
    model = model_with_buffer()
    ema = EMA(model, decay=0.9)
    other = EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
