"""Timestep embedding of the U-Net: sinusoidal features of t, then a two-layer MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Transformer-style sinusoidal features of (possibly fractional) timesteps: (B,) → (B, dim).

    Frequencies are max_period ** (-i / (dim/2 - downscale_freq_shift)), i = 0 … dim/2 - 1.
    Stable Diffusion (CompVis `timestep_embedding`) uses shift 0 and the order [cos, sin], which
    is diffusers' `flip_sin_to_cos=True, freq_shift=0`; diffusers' own default (shift 1,
    [sin, cos]) is the DDPM variant. Computed in fp32 whatever the model's dtype, since t reaches
    1000 and bf16 has too few bits for it.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (
        half - downscale_freq_shift
    )
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * exponent)[None, :]
    pair = (angles.cos(), angles.sin()) if flip_sin_to_cos else (angles.sin(), angles.cos())
    return F.pad(torch.cat(pair, dim=-1), (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """MLP from the sinusoidal features to the width every ResBlock receives: linear, SiLU, linear."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))
