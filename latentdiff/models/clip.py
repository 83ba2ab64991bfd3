"""CLIP (Radford et al. 2021): a text tower and an image tower trained contrastively.

The text tower is our `TextEncoder` (so its weights can become the U-Net's conditioning) plus a
projection of its pooled eos state; the image tower is a small ViT. Both end L2-normalised in
a shared `embed_dim` space, where the cosine of an (image, caption) pair measures agreement:
the basis of the CLIP score and of CLIP-based data filtering.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.config import CLIPConfig, ImageEncoderConfig
from latentdiff.models.text_encoder import TextEncoder, TransformerBlock

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature τ = 0.07
LOGIT_SCALE_MAX = 100.0  # CLIP clips exp(logit_scale) here to keep training stable


class ImageEncoder(nn.Module):
    """ViT: images in [-1, 1] (B, 3, S, S) → the class token's final-LN state (B, width).

    As CLIP's: patch-embedding conv without bias, class token, learned position embedding, a
    LayerNorm before the blocks (`ln_pre`), non-causal pre-LN blocks, `ln_post` on the class
    token. Only `image_size` is accepted: interpolated position embeddings would not make a
    model trained at 64×64 see 4× larger objects as the same ones, so callers resize.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embedding = nn.Conv2d(
            3, width, config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.position_embedding = nn.Parameter(torch.empty(config.num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, config.heads, config.activation, causal=False)
            for _ in range(config.layers)
        )
        self.ln_post = nn.LayerNorm(width)
        for parameter in (self.class_embedding, self.position_embedding):
            nn.init.normal_(parameter, std=width**-0.5)
        for block in self.blocks:
            block.initialize_weights(config.layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.ln_post(self._states(images)[:, 0])

    def patch_states(self, images: Tensor) -> Tensor:
        """Every patch token's final state, through `ln_post` as the class token's is:
        (B, N, D), patches in row-major order. These are the targets of representation
        alignment (`latentdiff.training.alignment`)."""
        return self.ln_post(self._states(images)[:, 1:])

    def _states(self, images: Tensor) -> Tensor:
        """The final states of the class token and the patches, (B, 1 + N, D)."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"the image tower takes {size}×{size} images, got {images.shape}")
        x = self.patch_embedding(images).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.position_embedding)
        for block in self.blocks:
            x = block(x)
        return x


class CLIP(nn.Module):
    """Text tower + image tower + learned temperature; `forward` gives image×text logits."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(config.text)
        self.text_projection = nn.Linear(config.text.width, config.embed_dim, bias=False)
        self.image_encoder = ImageEncoder(config.image)
        self.image_projection = nn.Linear(config.image.width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        for projection, width in [
            (self.text_projection, config.text.width),
            (self.image_projection, config.image.width),
        ]:
            nn.init.normal_(projection.weight, std=width**-0.5)

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Token ids (B, L) → unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.text_projection(self.text_encoder.pooled(input_ids)), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (B, 3, S, S) → unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def forward(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """Logits per image (B_image, B_text) = scale · cosine; logits per text is the transpose."""
        scale = self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
        return scale * self.encode_image(images) @ self.encode_text(input_ids).T


def clip_loss(logits_per_image: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy: image i's caption is text i, and text i's image is image i.

    Repeated captions (common in the Shapes World) need no mask. Identical ids give identical
    text embeddings, so the k texts of a group share one logit column and one logit row; then
    this loss equals, term for term, the multi-positive loss whose targets are spread evenly
    over all k matching texts (and images), gradients included. The only trace is a floor of
    mean log k under the loss. Different captions that are both true of an image ("a red
    circle", "a red circle on the left") stay negatives, as in CLIP on web data.
    """
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    image_to_text = F.cross_entropy(logits_per_image, targets)
    text_to_image = F.cross_entropy(logits_per_image.T, targets)
    return (image_to_text + text_to_image) / 2


@torch.no_grad()
def clip_score(model: CLIP, images: Tensor, input_ids: Tensor) -> Tensor:
    """CLIP score of each (image, caption) pair, (B,): 100 · max(cos, 0).

    Hessel et al. (2021) define w · max(cos, 0); w = 100 is the common convention for
    text-to-image evaluation (torchmetrics). Images in [-1, 1] are resized to the model's input
    size first by area averaging: the box filter the Shapes World renderer downsamples with.
    """
    size = model.config.image.image_size
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="area")
    cosine = (model.encode_image(images) * model.encode_text(input_ids)).sum(dim=-1)
    return 100 * cosine.clamp(min=0)
