"""What every pipeline shares: text → context, latents → images, per-image seeded noise."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentdiff.checkpoints.bundle import Components
from latentdiff.models.autoencoder import from_diffusion_latents, to_diffusion_latents
from latentdiff.pipelines.prompts import encode_prompts


def encode_prompt(components: Components, prompts: list[str]) -> torch.Tensor:
    """Prompts → the text encoder's context for cross-attention, (B, n·L, D): `(word:1.2)`
    emphasis, and prompts longer than the context split into n chunks where the tokenizer
    allows it (SD's CLIP), truncated with a warning otherwise."""
    tokenizer = components.tokenizer
    return encode_prompts(
        components.text_encoder,
        tokenizer,
        prompts,
        components.config.text_encoder.context_length,
        max_chunks=tokenizer.max_chunks,
        token_embeddings=components.config.unet.token_layout_size is not None,
    )


@torch.no_grad()
def decode_latents(
    components: Components, z: torch.Tensor, *, tiled: bool = False
) -> list[Image.Image]:
    """Diffusion-space latents → PIL images (undoing the latent normalisation first);
    `tiled` decodes in overlapping tiles, for images too large to decode whole."""
    z = from_diffusion_latents(z, components.config.autoencoder)
    autoencoder = components.autoencoder
    x = autoencoder.decode_tiled(z) if tiled else autoencoder.decode(z)
    return [Image.fromarray(image) for image in tensor_to_images(x)]


@torch.no_grad()
def encode_images(components: Components, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W) → diffusion-space latents (normalised posterior mode),
    in fp32 whatever the autoencoder's dtype, as the samplers keep their state."""
    posterior = components.autoencoder.encode(images)
    return to_diffusion_latents(posterior.mode().float(), components.config.autoencoder)


def inpainting_concat(
    components: Components, mask: torch.Tensor, masked_image: torch.Tensor
) -> torch.Tensor:
    """What SD's inpainting U-Nets see after the noisy latents: [mask, masked-image latents].

    mask (B, 1, H, W), 1 = repaint, goes to the latent grid by nearest-neighbour resizing (as
    diffusers does); masked_image (B, 3, H, W) in [-1, 1] is the image with the region to
    repaint set to 0. Returns (B, 1 + C, H/f, W/f), in the order the models were trained with.
    """
    latents = encode_images(components, masked_image)
    mask = F.interpolate(mask.to(latents), size=latents.shape[-2:], mode="nearest")
    return torch.cat([mask, latents], dim=1)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] → uint8 (B, H, W, 3), as a saved PNG holds it."""
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: its starting noise and any fresh noise of the sampler come
    from it, so image k of a batch equals a lone run with seed k, whatever the sampler."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def draw_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device
) -> torch.Tensor:
    """One N(0, I) sample of `shape` per generator, stacked into a batch on `device`."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> torch.Tensor:
    """The starting noise a run with these per-image seeds uses."""
    return draw_noise(shape, seeded_generators(seeds), device)
