"""Text to image: noise → sampler over the guided denoiser → autoencoder decode.

A task differs from this one only in its initial latents, its sigmas and its denoiser wrapper.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import torch

from latentdiff.checkpoints.bundle import Components
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.guidance import cfg_denoiser
from latentdiff.diffusion.samplers import (
    SAMPLERS,
    final_latents,
    initial_latents,
    quantize_timesteps,
    sigmas_for,
)
from latentdiff.diffusion.schedules import SchedulerSettings
from latentdiff.errors import UsageError
from latentdiff.pipelines.common import draw_noise, encode_prompt, seeded_generators
from latentdiff.pipelines.request import GenerationRequest


def resolve_seeds(request: GenerationRequest) -> list[int]:
    """Image k uses `seed + k`; no seed means a fresh random one (reported back to the caller)."""
    base = request.seed if request.seed is not None else random.randrange(2**32)
    return [base + k for k in range(len(request.prompts))]


@torch.no_grad()
def txt2img_latents(
    components: Components,
    request: GenerationRequest,
    seeds: list[int],
    *,
    scheduler: SchedulerSettings,
    latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Sample diffusion-space latents (B, C, h, w) for `request`."""
    config = components.config
    request.validate(config.size_multiple, tuple(SAMPLERS))
    device = next(components.unet.parameters()).device
    f = config.autoencoder.downsample_factor
    height, width = request.height or config.sample_size, request.width or config.sample_size
    shape = (config.unet.in_channels, height // f, width // f)
    generators = seeded_generators(seeds)
    if latents is None:
        latents = draw_noise(shape, generators, device)
    elif tuple(latents.shape) != (len(seeds), *shape):
        expected = (len(seeds), *shape)
        raise UsageError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    settings = replace(scheduler, karras=scheduler.karras or request.schedule == "karras")
    sampler = request.sampler
    sigmas = sigmas_for(sampler, config.diffusion, request.num_inference_steps, settings)
    sigmas = sigmas.to(device, torch.float32)
    # One call, so that a prompt and its negative span the same number of 77-token chunks.
    cond, uncond = encode_prompt(components, request.prompts + request.negative_prompts).chunk(2)
    denoiser = Denoiser(
        components.unet, config.diffusion, quantize=quantize_timesteps(sampler, settings)
    )
    guided = cfg_denoiser(
        denoiser,
        cond,
        uncond,
        request.guidance_scale,
        guidance_rescale=request.guidance_rescale,
        c_skip=lambda sigma: denoiser.scalings(sigma)[0],
    )
    x = initial_latents(latents.to(device, torch.float32), sigmas, sampler, settings)
    # Ancestral samplers continue each image's own generator past its starting noise.
    noise_source = generator if generator is not None else generators
    x = SAMPLERS[sampler](guided, x, sigmas, generator=noise_source, callback=callback)
    return final_latents(x, sigmas)
