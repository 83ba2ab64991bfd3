"""What every pipeline shares: text → context, latents → images, per-image seeded noise."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from latentdiff.checkpoints.bundle import Components
from latentdiff.models.autoencoder import from_diffusion_latents, to_diffusion_latents


@torch.no_grad()
def encode_prompt(components: Components, prompts: list[str]) -> torch.Tensor:
    """Prompts → the text encoder's context for cross-attention, (B, L, D)."""
    device = next(components.text_encoder.parameters()).device
    ids = components.tokenizer.encode(prompts, components.config.text_encoder.context_length)
    return components.text_encoder(ids.to(device))


@torch.no_grad()
def decode_latents(components: Components, z: torch.Tensor) -> list[Image.Image]:
    """Diffusion-space latents → PIL images (undoing the latent normalisation first)."""
    x = components.autoencoder.decode(from_diffusion_latents(z, components.config.autoencoder))
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(image) for image in pixels.permute(0, 2, 3, 1).cpu().numpy()]


@torch.no_grad()
def encode_images(components: Components, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W) → diffusion-space latents (normalised posterior mode)."""
    posterior = components.autoencoder.encode(images)
    return to_diffusion_latents(posterior.mode(), components.config.autoencoder)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> torch.Tensor:
    """One N(0, I) sample per seed, so with a deterministic sampler image k of a batch equals a
    lone run with seed k (ancestral samplers also draw fresh noise, from one generator per run)."""
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(draws).to(device)
