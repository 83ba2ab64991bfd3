"""The conditional U-Net of Stable Diffusion: ε- or v-prediction from a noisy latent, t and text.

Structure (Rombach et al. 2022, after Ho et al. 2020 / Dhariwal & Nichol 2021):
conv_in → down levels [(ResBlock [+ SpatialTransformer]) × layers_per_block, Downsample] →
mid (ResBlock, SpatialTransformer, ResBlock) → up levels [(ResBlock on [h, skip]
[+ SpatialTransformer]) × (layers_per_block + 1), Upsample] → GroupNorm, SiLU, conv_out.
Every down-path output (conv_in's included) is a skip connection consumed, last in first out,
by one up-path ResBlock.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.config import UNetConfig
from latentdiff.models.attention import SpatialTransformer
from latentdiff.models.embeddings import TimestepEmbedding, timestep_embedding
from latentdiff.models.layers import Downsample, ResBlock, Upsample
from latentdiff.models.token_layout import LayoutBias, TokenLayoutBias, split_token_embeddings


class UNetBlock(nn.Module):
    """A ResBlock, followed on attention levels by a spatial transformer over the text."""

    def __init__(self, resnet: ResBlock, transformer: SpatialTransformer | None) -> None:
        super().__init__()
        self.resnet = resnet
        self.transformer = transformer

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor, layout: LayoutBias | None = None
    ) -> Tensor:
        x = self.resnet(x, emb)
        return x if self.transformer is None else self.transformer(x, context, layout)


class UNetLevel(nn.Module):
    """One resolution level: its blocks, then a Downsample / Upsample (None at the ends)."""

    def __init__(self, blocks: list[UNetBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class MidBlock(nn.Module):
    """ResBlock, spatial transformer, ResBlock at the lowest resolution (always with attention)."""

    def __init__(self, res1: ResBlock, transformer: SpatialTransformer, res2: ResBlock) -> None:
        super().__init__()
        self.res1 = res1
        self.transformer = transformer
        self.res2 = res2

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor, layout: LayoutBias | None = None
    ) -> Tensor:
        return self.res2(self.transformer(self.res1(x, emb), context, layout), emb)


class UNet(nn.Module):
    """x (B, C_in, H, W), t (B,) or scalar, context (B, L, D) → (B, C_out, H, W).

    H and W must be multiples of 2 ** (levels - 1).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.block_channels
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        time_dim = config.time_embed_mult * channels[0]
        self.time_embed = TimestepEmbedding(channels[0], time_dim)
        self.class_embed = (
            nn.Embedding(config.num_class_embeds, time_dim) if config.num_class_embeds else None
        )

        skip_channels = [channels[0]]  # what each down-path output hands to the up path
        self.down = nn.ModuleList()
        for level, width in enumerate(channels):
            blocks = []
            for _ in range(config.layers_per_block):
                blocks.append(self._block(skip_channels[-1], width, level))
                skip_channels.append(width)
            downsample = None if level == len(channels) - 1 else Downsample(width)
            if downsample is not None:
                skip_channels.append(width)
            self.down.append(UNetLevel(blocks, downsample))

        width = channels[-1]
        self.mid = MidBlock(
            self._resnet(width, width), self._transformer(width), self._resnet(width, width)
        )

        self.up = nn.ModuleList()  # lowest resolution first, in the order they run
        for level in reversed(range(len(channels))):
            blocks = []
            for _ in range(config.layers_per_block + 1):
                c_in = width + skip_channels.pop()
                width = channels[level]
                blocks.append(self._block(c_in, width, level))
            self.up.append(UNetLevel(blocks, Upsample(width) if level > 0 else None))

        self.norm_out = nn.GroupNorm(config.norm_groups, channels[0])
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)
        self.token_layout = None
        if config.token_layout_size is not None:
            levels = [i for i, on in enumerate(config.attention_levels) if on]
            self.token_layout = TokenLayoutBias(
                config.context_dim,
                config.token_layout_size,
                sorted({*levels, len(channels) - 1}),  # the mid block attends too
            )
        self.initialize_weights()

    def _resnet(self, in_channels: int, out_channels: int) -> ResBlock:
        time_dim = self.config.time_embed_mult * self.config.block_channels[0]
        return ResBlock(
            in_channels, out_channels, time_channels=time_dim, groups=self.config.norm_groups
        )

    def _transformer(self, channels: int, only_cross_attention: bool = False) -> SpatialTransformer:
        config = self.config
        return SpatialTransformer(
            channels,
            config.heads_at(channels),
            config.context_dim,
            depth=config.transformer_depth,
            groups=config.norm_groups,
            linear_projection=config.use_linear_projection,
            only_cross_attention=only_cross_attention,
        )

    def _block(self, in_channels: int, out_channels: int, level: int) -> UNetBlock:
        config = self.config
        transformer = None
        if config.attention_levels[level]:
            only_cross = bool(config.only_cross_attention and config.only_cross_attention[level])
            transformer = self._transformer(out_channels, only_cross)
        return UNetBlock(self._resnet(in_channels, out_channels), transformer)

    def initialize_weights(self) -> None:
        """PyTorch's default init, except zeros for the last layer of every residual branch.

        As in LDM/ADM (not diffusers, which keeps the default init everywhere): each ResBlock
        and spatial transformer starts as the identity and conv_out predicts 0, which makes
        training from scratch start stable. Pretrained checkpoints overwrite all of it.
        """
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            elif isinstance(module, SpatialTransformer):
                nn.init.zeros_(module.proj_out.weight)
                nn.init.zeros_(module.proj_out.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        """`class_labels` (B,) only for a U-Net with `num_class_embeds` (the upscaler's noise
        level), whose embedding is added to the timestep's. With a token layout bias, the
        context is `join_token_embeddings(states, token input embeddings)`, (B, S, 2D)."""
        # A half-precision U-Net takes the sampler's fp32 latents and context as they come.
        dtype = self.conv_in.weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        layout = None
        if self.token_layout is not None:
            context, token_embeds = split_token_embeddings(context)
            layout = self.token_layout.bind(token_embeds, x.shape[-2])
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        features = timestep_embedding(
            t, self.config.block_channels[0], flip_sin_to_cos=self.config.flip_sin_to_cos
        )
        emb = self.time_embed(features.to(x.dtype))  # (B, time_dim)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("this U-Net needs class_labels (num_class_embeds is set)")
            emb = emb + self.class_embed(class_labels).to(emb.dtype)

        h = self.conv_in(x)  # (B, C0, H, W)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb, context, layout)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, H/2, W/2)
                skips.append(h)

        h = self.mid(h, emb, context, layout)  # (B, C_last, H / 2**(levels-1), W / 2**(levels-1))

        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context, layout)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)
