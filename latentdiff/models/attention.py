"""Attention blocks: the U-Net's spatial transformer and the autoencoder's pixel self-attention.

All attention goes through `torch.nn.functional.scaled_dot_product_attention`, whose CPU and
GPU kernels are memory-efficient (flash-style, the L×L matrix is never materialised), so no
sliced fallback is needed. SD 2.x's `upcast_attention` (softmax in fp32 under fp16) is likewise
what these kernels do anyway.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.models.layers import from_tokens, to_tokens


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q kᵀ / √d) v per head: (B, L, H·d), (B, S, H·d), (B, S, H·d) → (B, L, H·d)."""
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))  # (B, H, ·, d)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Multi-head attention of x over a context (over x itself when no context is given)."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        *,
        context_dim: int | None = None,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context  # (B, S, D_ctx)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(attention(q, k, v, self.heads))  # (B, L, D)


class FeedForward(nn.Module):
    """Transformer MLP with a GEGLU gate (Shazeer 2020): (v · GELU(g)) W_out, inner width 4·dim."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the text, GEGLU MLP; residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, H·W, C)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on the text context.

    GroupNorm (eps 1e-6), project in, `depth` transformer blocks, project out, add the input.
    The projections are 1×1 convolutions in SD 1.x and linear layers in SD 2.x — the same map,
    stored with different weight shapes, so the choice only matters for loading checkpoints.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        *,
        depth: int = 1,
        groups: int = 32,
        linear_projection: bool = False,
    ) -> None:
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        projection = nn.Linear if linear_projection else _conv1x1
        self.proj_in = projection(channels, channels)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, context_dim) for _ in range(depth)
        )
        self.proj_out = projection(channels, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        h = self.proj_in(to_tokens(h)) if self.linear_projection else to_tokens(self.proj_in(h))
        for block in self.blocks:
            h = block(h, context)  # (B, H·W, C)
        if self.linear_projection:
            h = from_tokens(self.proj_out(h), height, width)
        else:
            h = self.proj_out(from_tokens(h, height, width))
        return x + h  # (B, C, H, W)


class SpatialSelfAttention(nn.Module):
    """The autoencoder's mid-block attention: one head over all pixels, GroupNorm, residual."""

    def __init__(self, channels: int, *, groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.attention = CrossAttention(channels, heads=1, qkv_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        h = self.attention(to_tokens(self.norm(x)))  # (B, H·W, C)
        return x + from_tokens(h, height, width)


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1)
