"""Convolutional blocks shared by the autoencoder and the U-Net: ResBlock, Downsample, Upsample.

Both models of Stable Diffusion are built from the same pieces; they differ only in the
GroupNorm epsilon (U-Net 1e-5, autoencoder 1e-6), in whether a ResBlock receives a timestep
embedding, and in the padding of the strided downsampling convolution.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, with the timestep embedding added after the first conv.

    A 1×1 convolution carries the input over when the channel count changes. Stable Diffusion
    trains with dropout 0, so there is none here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        time_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_channels, out_channels) if time_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_proj is not None:
            h = h + self.time_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    """Stride-2 3×3 convolution.

    The U-Net pads by one on every side. The autoencoder pads only right and bottom, then
    convolves without padding (`asymmetric=True`): that is how SD's autoencoder was trained, and
    its weights give different latents with symmetric padding.
    """

    def __init__(self, channels: int, *, asymmetric: bool = False) -> None:
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour 2× upsampling followed by a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, H·W, C); a view, no copy, when `x` is channels_last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def from_tokens(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, C) → (B, C, H, W), the inverse of `to_tokens` (channels_last strides)."""
    return x.unflatten(1, (height, width)).permute(0, 3, 1, 2)
