"""Representation alignment (REPA; Yu et al. 2025, "Training Diffusion Transformers Is Easier
Than You Think"): a training regulariser that pulls the U-Net's hidden states on the noisy
latent x_t, through a small MLP h_φ, towards a pretrained image encoder's patch states y of the
clean image:

    L = L_diffusion + λ · mean over patches n of (1 − cos(h_φ(f_n), y_n))

Why: before it can denoise well, the U-Net must learn what the image holds (which shapes, of
which colours, where); REPA hands it that representation from an encoder that already has it.
Here the encoder is the project's CLIP image tower, trained contrastively on the world. The
paper writes −cos; 1 − cos has the same gradient and keeps the logged loss at or above the
diffusion loss. Only training uses any of this: export drops h_φ, and sampling is unchanged.

f is the output of the U-Net's down path at the level whose feature grid is the encoder's patch
grid (8×8 for the shapes model: 16×16 latents, a 64×64 ViT with 8×8 patches), so that feature
n and patch n see the same place without resampling either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.config import UNetConfig
from latentdiff.errors import UsageError
from latentdiff.models.clip import ImageEncoder

PROJECTOR_WIDTH = 512
"""Hidden width of h_φ; the paper's is 2048 beside transformers 4–9× wider than this U-Net."""


class Projector(nn.Module):
    """h_φ: a 3-layer MLP with SiLU, applied to each position of the U-Net's down-path features
    at `level` (its last block's output, `channels` wide)."""

    def __init__(
        self, level: int, channels: int, target_width: int, hidden: int = PROJECTOR_WIDTH
    ) -> None:
        super().__init__()
        self.level = level
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, target_width),
        )

    @classmethod
    def for_unet(cls, config: UNetConfig, level: int, target_width: int) -> Projector:
        """A fresh h_φ from `config`'s down-path features at `level` to `target_width`."""
        return cls(level, config.block_channels[level], target_width)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, C, h, w) → (B, h·w, target_width), positions in row-major order."""
        return self.mlp(features.flatten(2).transpose(1, 2))


def alignment_loss(projected: Tensor, targets: Tensor) -> Tensor:
    """mean(1 − cos) over batch and patches; projected and targets (B, N, D), in float32."""
    cosine = F.cosine_similarity(projected.float(), targets.float(), dim=-1)
    return (1 - cosine).mean()


def alignment_level(config: UNetConfig, latent_side: int, grid_size: int) -> int:
    """The U-Net level whose down-path features are `grid_size` square at `latent_side`."""
    for level in range(len(config.block_channels)):
        if latent_side >> level == grid_size:
            return level
    sides = [latent_side >> level for level in range(len(config.block_channels))]
    raise UsageError(
        f"the encoder's {grid_size}×{grid_size} patch grid matches no U-Net level "
        f"(feature sides {sides}): choose an encoder whose patches match one"
    )


@torch.no_grad()
def patch_targets(encoder: ImageEncoder, images: Tensor) -> Tensor:
    """y: the encoder's patch states of `images` in [-1, 1], (B, N, D) in fp16 for the cache."""
    device = next(encoder.parameters()).device
    return encoder.patch_states(images.to(device)).half().cpu()
