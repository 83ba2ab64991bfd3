"""Attention blocks: the U-Net's spatial transformer and the autoencoder's pixel self-attention.

All attention goes through `torch.nn.functional.scaled_dot_product_attention`. Where a fused
kernel serves the call (PyTorch's CPU flash kernel does for fp32, bf16 and fp16, with or without
gradients), the (B·H, L, L) score matrix is never materialised. Where none does (a device, dtype
or head width without one, or a user forcing `sdpa_kernel(SDPBackend.MATH)`), PyTorch's math
fallback builds the scores and their softmax in full: at 512² SD 1.5's first-level
self-attention (batch 2, 8 heads, L = 4096) peaks at 2.3 GiB there against 14 MiB for the flash
kernel (measured, torch 2.13 CPU), and at 1024² (L = 16384) the math path needs over 32 GiB.

Sliced attention (`set_attention_slice`) bounds that: queries are independent rows of the
softmax, so attention is computed for at most `slice_size` query rows at a time and the scores
shrink to (B·H, slice_size, L) — 616 MiB in the example above with slices of 1024 rows. On a
fused kernel it changes nothing but the summation order, so it is off by default.
SD 2.x's `upcast_attention` (softmax in fp32 under fp16) is what these kernels do anyway.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.errors import UsageError
from latentdiff.models.layers import from_tokens, to_tokens
from latentdiff.models.token_layout import LayoutBias


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    slice_size: int | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """softmax(q kᵀ / √d + bias) v per head: (B, L, H·d), (B, S, H·d), (B, S, H·d) → (B, L, H·d).

    With a `slice_size`, at most that many query rows are attended at a time. `bias`
    (B, 1, L, S) is shared by the heads (the token layout bias, `models/token_layout.py`).
    """
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))  # (B, H, ·, d)
    bias = None if bias is None else bias.to(q.dtype)
    if slice_size is None or slice_size >= q.shape[2]:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        # Written slice by slice into one buffer (a list of slices and torch.cat would hold
        # the output twice), laid out (B, L, H, d) so that the flatten below is a view.
        batch, _, length, head_dim = q.shape
        out = q.new_empty(batch, length, heads, head_dim).transpose(1, 2)  # (B, H, L, d)
        for start in range(0, q.shape[2], slice_size):
            rows = slice(start, start + slice_size)
            rows_bias = None if bias is None else bias[:, :, rows]
            out[:, :, rows] = F.scaled_dot_product_attention(
                q[:, :, rows], k, v, attn_mask=rows_bias
            )
    return out.transpose(1, 2).flatten(2)


def set_attention_slice(module: nn.Module, slice_size: int | None) -> None:
    """Compute every attention of `module` in slices of ≤ `slice_size` query rows (None: whole).

    Bounds the score matrix of PyTorch's math fallback; see the module docstring.
    """
    if slice_size is not None and (
        isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1
    ):
        raise UsageError(f"attention slice size must be a positive integer, got {slice_size!r}")
    for layer in module.modules():
        if isinstance(layer, CrossAttention):
            layer.slice_size = slice_size


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
        self.slice_size: int | None = None  # query rows per call, see set_attention_slice
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(
        self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        context = x if context is None else context  # (B, S, D_ctx)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(attention(q, k, v, self.heads, self.slice_size, bias))  # (B, L, D)


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
    """Pre-LayerNorm block: self-attention, cross-attention to the text, GEGLU MLP; residuals.

    With `only_cross_attention` the first attention attends to the text as well, instead of to
    the pixels (SD's x4 upscaler, whose large feature maps make self-attention costly).
    """

    def __init__(
        self, dim: int, heads: int, context_dim: int, *, only_cross_attention: bool = False
    ) -> None:
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(
            dim, heads, context_dim=context_dim if only_cross_attention else None
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, layout_bias: Tensor | None = None) -> Tensor:
        """`layout_bias` (B, 1, L, S) is added to the cross-attention's logits."""
        x = x + self.attn1(self.norm1(x), context if self.only_cross_attention else None)
        x = x + self.attn2(self.norm2(x), context, layout_bias)
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
        only_cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        projection = nn.Linear if linear_projection else _conv1x1
        self.proj_in = projection(channels, channels)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(
                channels, heads, context_dim, only_cross_attention=only_cross_attention
            )
            for _ in range(depth)
        )
        self.proj_out = projection(channels, channels)

    def forward(self, x: Tensor, context: Tensor, layout: LayoutBias | None = None) -> Tensor:
        """`layout`: the token layout bias of this forward pass, if the U-Net has one."""
        _, _, height, width = x.shape
        bias = None if layout is None else layout(height, width)
        h = self.norm(x)
        h = self.proj_in(to_tokens(h)) if self.linear_projection else to_tokens(self.proj_in(h))
        for block in self.blocks:
            h = block(h, context, bias)  # (B, H·W, C)
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
