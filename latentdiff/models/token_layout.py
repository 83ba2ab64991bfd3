"""A learnt spatial prior per text token on the U-Net's cross-attention logits.

Pixel p of a feature map attends to token j with the logit q_p·k_j/√d + ⟨e_j, w_p⟩: e_j is
token j's input embedding (before the text transformer), w_p a learnt vector for pixel p of
that resolution level, zero at init so that the model starts as the plain U-Net.

Why (docs/MODEL.md, "Why the edge phrases are not learnt"): without it, where a token lands
can only come from the pixels' features meeting the token's key. The Shapes World model's
pixels carry no left/right features and its text transformer maps "left" and "right" to
nearly the same states, a saddle that no fine-tune left in 1,200 steps; their input embeddings
do differ, and a per-pixel w_p has the position built in. With this bias a fine-tune places
"on the left/right/top/bottom" in 14–18 of 18 samples where the plain model places 3–11.

The token embeddings reach the U-Net as the second half of the context's features
(`join_token_embeddings`), so every sampler, guidance batch and prompt chunk carries them
exactly as it carries the context. Off in every Stable Diffusion preset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayoutBias = Callable[[int, int], Tensor]
"""(height, width) of a feature map → its cross-attention bias (B, 1, height·width, S)."""

GAIN = 64.0
"""The maps are stored divided by this: Adam moves every weight by about the learning rate
per step, and at a U-Net's rate (1e-4) a zero-initialised logit bias would take ~10⁴ steps to
reach logits of order 1; the pilot learnt it at 1e-2 beside 1.5e-4 for the rest."""


class TokenLayoutBias(nn.Module):
    """One zero-initialised map w (width, side, side) per resolution level that attends.

    `side` is the level's feature side at the training latent side; at other sizes the map
    is resized bilinearly, so it stays a prior over relative position.
    """

    def __init__(self, width: int, latent_side: int, levels: list[int]) -> None:
        super().__init__()
        self.maps = nn.ParameterDict(
            {
                str(level): nn.Parameter(torch.zeros(width, side, side))
                for level in levels
                if (side := latent_side >> level) > 0
            }
        )

    def bind(self, token_embeds: Tensor, latent_height: int) -> LayoutBias:
        """The bias function for one forward pass over latents `latent_height` high.

        token_embeds (B, S, width). Each feature map's level follows from its height (levels
        halve it); the bias of each level is computed once per pass.
        """
        biases: dict[tuple[int, int], Tensor] = {}

        def bias(height: int, width: int) -> Tensor:
            if (height, width) not in biases:
                level = (latent_height // height).bit_length() - 1
                w = self.maps[str(level)]  # (D, side, side)
                if w.shape[1:] != (height, width):
                    w = F.interpolate(w[None].float(), (height, width), mode="bilinear")[0]
                logits = token_embeds @ (GAIN * w.flatten(1)).to(token_embeds.dtype)
                biases[height, width] = logits.transpose(1, 2)[:, None]  # (B, 1, H·W, S)
            return biases[height, width]

        return bias


def join_token_embeddings(context: Tensor, token_embeds: Tensor) -> Tensor:
    """The context of a U-Net with a token layout bias: [states | input embeddings], (B, S, 2D)."""
    return torch.cat([context, token_embeds.to(context.dtype)], dim=-1)


def split_token_embeddings(context: Tensor) -> tuple[Tensor, Tensor]:
    """`join_token_embeddings` undone: (states, token input embeddings), each (B, S, D)."""
    states, token_embeds = context.chunk(2, dim=-1)
    return states, token_embeds
