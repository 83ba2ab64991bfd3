"""The KL autoencoder of latent diffusion (Rombach et al. 2022): image ↔ latent, downsampling f.

The encoder predicts a diagonal Gaussian posterior q(z | x) with 2·latent_channels moments; the
decoder maps a latent back to pixels. Images are in [-1, 1].

`encode`/`decode` work on the autoencoder's own latent scale. Diffusion runs on normalised
latents, (z − latents_mean)·scaling_factor / latents_std (SD: z·0.18215; the per-channel terms
are diffusers' optional `latents_mean`/`latents_std`). `to_diffusion_latents` and
`from_diffusion_latents` below are that map; callers apply them (pipelines, latent caching),
so the module stays the plain autoencoder that checkpoints describe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.config import AutoencoderConfig
from latentdiff.errors import UsageError
from latentdiff.models.attention import SpatialSelfAttention
from latentdiff.models.layers import Downsample, ResBlock, Upsample

NORM_EPS = 1e-6
"""GroupNorm epsilon of every autoencoder normalisation (the U-Net uses 1e-5)."""


def to_diffusion_latents(z: Tensor, config: AutoencoderConfig) -> Tensor:
    """Autoencoder latents → the unit-scale latents diffusion runs on: (z − μ_c)·s / σ_c."""
    mean, std = _channel_stats(z, config)
    return (z - mean) * config.scaling_factor / std


def from_diffusion_latents(x: Tensor, config: AutoencoderConfig) -> Tensor:
    """The inverse of `to_diffusion_latents`, applied before decoding."""
    mean, std = _channel_stats(x, config)
    return x * std / config.scaling_factor + mean


def _channel_stats(z: Tensor, config: AutoencoderConfig) -> tuple[Tensor, Tensor]:
    shape = (1, -1, 1, 1)
    mean = torch.tensor(config.latents_mean or 0.0, dtype=z.dtype, device=z.device)
    std = torch.tensor(config.latents_std or 1.0, dtype=z.dtype, device=z.device)
    return mean.reshape(shape) if mean.ndim else mean, std.reshape(shape) if std.ndim else std


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), from moments (B, 2C, h, w) split along channels."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite, as in LDM
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std · ε (reparameterised, so gradients reach the encoder)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q ‖ N(0, I)) summed over latent dimensions: (B,)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class MidBlock(nn.Module):
    """ResBlock, single-head self-attention over pixels, ResBlock (at the lowest resolution)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, groups=groups, eps=NORM_EPS)
        self.attn = SpatialSelfAttention(channels, groups=groups)
        self.res2 = ResBlock(channels, channels, groups=groups, eps=NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x)))


class Level(nn.Module):
    """One resolution level: ResBlocks, then an optional down- or upsampling."""

    def __init__(self, resnets: list[ResBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.resample is None else self.resample(x)


class Encoder(nn.Module):
    """x (B, 3, H, W) → posterior moments (B, 2·latent_channels, H/f, W/f)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        channels, groups = config.block_channels, config.norm_groups
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        previous = channels[0]
        for level, width in enumerate(channels):
            resnets = [
                ResBlock(previous if i == 0 else width, width, groups=groups, eps=NORM_EPS)
                for i in range(config.layers_per_block)
            ]
            last = level == len(channels) - 1
            self.down.append(Level(resnets, None if last else Downsample(width, asymmetric=True)))
            previous = width
        self.mid = MidBlock(channels[-1], groups)
        self.norm_out = nn.GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, C0, H, W)
        for level in self.down:
            h = level(h)
        h = self.mid(h)  # (B, C_last, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) → x (B, 3, f·h, f·w); one more ResBlock per level than the encoder."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        channels, groups = config.block_channels[::-1], config.norm_groups
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid = MidBlock(channels[0], groups)
        self.up = nn.ModuleList()  # lowest resolution first, in the order they run
        previous = channels[0]
        for level, width in enumerate(channels):
            resnets = [
                ResBlock(previous if i == 0 else width, width, groups=groups, eps=NORM_EPS)
                for i in range(config.layers_per_block + 1)
            ]
            last = level == len(channels) - 1
            self.up.append(Level(resnets, None if last else Upsample(width)))
            previous = width
        self.norm_out = nn.GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], config.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_last, h, w)
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, f·h, f·w)


class Autoencoder(nn.Module):
    """Encoder + 1×1 quant_conv → posterior; 1×1 post_quant_conv + decoder → image (as in SD)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        moments = 2 * config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(moments, moments, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)

    # Inputs are cast to the module's own dtype, so a half-precision autoencoder takes fp32
    # images and latents as they come; outputs stay in that dtype.
    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x.to(self.quant_conv.weight.dtype))))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))

    def decode_tiled(self, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """`decode` in overlapping tiles of ≤ tile×tile latent pixels, blended linearly in overlaps.

        Activation memory then follows the tile, not the image: the decoder's widest tensors
        are f² times the latent's area at 128–256 channels, ~1 GiB each for a 1024² image. Each
        tile is decoded on its own (its GroupNorm statistics and mid-block attention see only
        the tile), so the result is close to `decode(z)`, not equal; the linear ramps hide the
        seams. A latent that fits in one tile is decoded whole, exactly as by `decode`.
        Tiles are spread evenly, all of one size (≤ tile), every overlap at least `overlap`.
        """
        if tile < 1 or not 0 <= overlap < tile:
            raise UsageError(f"need tile ≥ 1 and 0 ≤ overlap < tile, got {tile} and {overlap}")
        height, width = z.shape[-2:]
        if height <= tile and width <= tile:
            return self.decode(z)
        f = self.config.downsample_factor
        rows, tile_height = _tiles(height, tile, overlap)
        cols, tile_width = _tiles(width, tile, overlap)
        row_weights = _blend_weights(rows, tile_height, f, z.device)
        col_weights = _blend_weights(cols, tile_width, f, z.device)
        # Accumulated in fp32, so that bf16 tiles blend without loss.
        image = z.new_zeros(
            len(z), self.config.in_channels, f * height, f * width, dtype=torch.float32
        )
        weight = image.new_zeros(f * height, f * width)
        for top, row_weight in zip(rows, row_weights, strict=True):
            for left, col_weight in zip(cols, col_weights, strict=True):
                piece = self.decode(z[:, :, top : top + tile_height, left : left + tile_width])
                w = row_weight[:, None] * col_weight[None, :]  # (f·tile_height, f·tile_width)
                window = (
                    slice(f * top, f * (top + tile_height)),
                    slice(f * left, f * (left + tile_width)),
                )
                image[(..., *window)] += w * piece
                weight[window] += w
        return (image / weight).to(piece.dtype)  # (B, 3, f·h, f·w)

    def forward(
        self,
        x: Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction of x and the posterior (whose `kl()` the training loss needs)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def _tiles(size: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Where tiles start along one side, and their common extent (≤ tile).

    As few tiles as cover `size` with `overlap`, shrunk to the same extent so that they just
    cover it with overlaps of about `overlap` (never less): no work is spent on wider overlaps.
    """
    if size <= tile:
        return [0], size
    count = -(-(size - overlap) // (tile - overlap))  # ⌈(size − overlap) / (tile − overlap)⌉
    # The least extent with count·extent − (count − 1)·overlap ≥ size; ≤ tile by the count.
    extent = -(-(size + (count - 1) * overlap) // count)
    return [round(i * (size - extent) / (count - 1)) for i in range(count)], extent


def _blend_weights(starts: list[int], extent: int, f: int, device: torch.device) -> list[Tensor]:
    """Per tile, 1-D weights over its f·extent output pixels: a linear ramp up across the
    overlap with the previous tile, down across the overlap with the next, 1 in between."""
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(f * extent, device=device)
        before = f * (starts[i - 1] + extent - start) if i > 0 else 0
        after = f * (start + extent - starts[i + 1]) if i < len(starts) - 1 else 0
        if before > 0:
            w[:before] *= (torch.arange(before, device=device) + 0.5) / before
        if after > 0:
            w[f * extent - after :] *= (torch.arange(after, 0, -1, device=device) - 0.5) / after
        weights.append(w)
    return weights
