"""Text to image: noise → sampler over the guided denoiser → autoencoder decode.

A task differs from this one only in its initial latents, its sigmas and its denoiser wrapper.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import torch

from latentdiff.checkpoints.bundle import Components
from latentdiff.config import ModelConfig
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
from latentdiff.pipelines.common import (
    draw_noise,
    encode_prompt,
    inpainting_concat,
    seeded_generators,
)
from latentdiff.pipelines.request import GenerationRequest


def resolve_seeds(
    request: GenerationRequest,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> list[int]:
    """One seed per image; all of the image's noise comes from it, so its PNG's seed reproduces it.

    Image k uses `seed + k`. Without a seed, diffusers users make a run repeatable with a seeded
    `generator`: the base seed is drawn from it, or with a list (one per image), image k's seed
    from generator k. Neither means a fresh random base seed (reported back to the caller).
    """
    n = len(request.prompts)
    if generator is not None and request.seed is not None:
        raise UsageError(
            "give a seed or a generator, not both: one seed makes all of an image's noise"
        )
    if isinstance(generator, list):
        if len(generator) != n:
            raise UsageError(f"give one generator per image: {len(generator)} for {n} images")
        return [draw_seed(g) for g in generator]
    if generator is not None:
        base = draw_seed(generator)
    else:
        base = request.seed if request.seed is not None else random.randrange(2**32)
    return [base + k for k in range(n)]


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**32, (), generator=generator, device=generator.device))


def settings_for(request: GenerationRequest, scheduler: SchedulerSettings) -> SchedulerSettings:
    """The model's scheduler settings, with Karras spacing if the request asks for it."""
    return replace(scheduler, karras=scheduler.karras or request.schedule == "karras")


def request_sigmas(
    config: ModelConfig, request: GenerationRequest, scheduler: SchedulerSettings
) -> torch.Tensor:
    """The σ's (float64, CPU) that `request` walks, after checking every one of its parameters,
    so that a caller can reject a bad request before any work (or progress bar) starts."""
    latent_channels = config.autoencoder.latent_channels
    if config.unet.in_channels != latent_channels and not config.is_inpainting:
        raise UsageError(
            f"this model's U-Net takes {config.unet.in_channels} input channels, not the "
            f"{latent_channels} of text to image (the x4 upscaler's, say, which needs an image)"
        )
    request.validate(config.size_multiple, tuple(SAMPLERS))
    steps, num_train = request.num_inference_steps, config.diffusion.num_train_timesteps
    try:
        return sigmas_for(
            request.sampler, config.diffusion, steps, settings_for(request, scheduler)
        )
    except UsageError:
        # The rest is checked above, so this is the step limit; its own message counts the
        # timesteps a sampler places, one more than the steps for DPM-Solver: name the user's.
        raise UsageError(
            f"{steps} steps are too many for the {request.sampler} sampler over this "
            f"model's {num_train} training timesteps"
        ) from None


@torch.no_grad()
def txt2img_latents(
    components: Components,
    request: GenerationRequest,
    seeds: list[int],
    *,
    scheduler: SchedulerSettings,
    latents: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Sample diffusion-space latents (B, C, h, w) for `request`, image k's noise from seeds[k];
    guidance values the request leaves unset are the model's (`config.sampling`)."""
    config = components.config
    request = request.with_defaults(config.sampling)
    sigmas = request_sigmas(config, request, scheduler)
    device = next(components.unet.parameters()).device
    f = config.autoencoder.downsample_factor
    height, width = request.height or config.sample_size, request.width or config.sample_size
    shape = (config.autoencoder.latent_channels, height // f, width // f)
    generators = seeded_generators(seeds)
    if latents is None:
        latents = draw_noise(shape, generators, device)
    elif tuple(latents.shape) != (len(seeds), *shape):
        expected = (len(seeds), *shape)
        raise UsageError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    sampler, settings = request.sampler, settings_for(request, scheduler)
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
        concat=repaint_all_concat(components, len(seeds), height, width, device),
        guidance_rescale=request.guidance_rescale,
        c_skip=lambda sigma: denoiser.scalings(sigma)[0],
        interval=request.guidance_interval,
    )
    x = initial_latents(latents.to(device, torch.float32), sigmas, sampler, settings)
    # Ancestral samplers continue each image's own generator past its starting noise.
    x = SAMPLERS[sampler](guided, x, sigmas, generator=generators, callback=callback)
    return final_latents(x, sigmas)


def repaint_all_concat(
    components: Components, batch: int, height: int, width: int, device: torch.device
) -> torch.Tensor | None:
    """An inpainting model's extra input for text to image (diffusers' and A1111's choice):
    repaint everything, i.e. a mask of ones and a masked image of zeros. None for other models."""
    if not components.config.is_inpainting:
        return None
    mask = torch.ones(1, 1, height, width, device=device)
    masked_image = torch.zeros(1, 3, height, width, device=device)
    # The same for every image: encode once.
    return inpainting_concat(components, mask, masked_image).expand(batch, -1, -1, -1)
