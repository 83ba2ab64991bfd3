"""Exponential moving average of a model's weights: the weights a diffusion model is sampled with.

θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step. The EMA averages away the noise of
the last ~1/(1 − d) updates, which matters for diffusion models (LDM, DiT and SD all sample
from EMA weights).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


def ema_decay_at(step: int, max_decay: float) -> float:
    """The decay for the update after `step` optimizer steps: min(max_decay, (1 + step) / (10 + step)).

    A constant 0.999 would keep 37 % of the random initialisation after 1,000 steps; the
    warm-up (TensorFlow's `ExponentialMovingAverage(num_updates=…)`) starts at 0.1, so early
    averages follow the fast-moving weights, and reaches 0.999 only after ~9,000 steps.
    """
    return min(max_decay, (1 + step) / (10 + step))


class EMA:
    """A frozen copy of a module whose parameters track the module's as an EMA.

    Buffers (e.g. normalisation statistics) are copied, not averaged. `module` is the
    averaged model, ready for sampling or for `state_dict()`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in `model`'s current weights; `step` = optimizer steps before this one."""
        weight = 1.0 - ema_decay_at(step, self.decay)
        for averaged, current in zip(self.module.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, weight)  # θ_ema + (1 − d)(θ − θ_ema)
        for averaged, current in zip(self.module.buffers(), model.buffers(), strict=True):
            averaged.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
