"""`load_pipeline(name_or_path)` → a `Pipeline` you call like diffusers' pipelines."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from latentdiff.checkpoints.bundle import Components
from latentdiff.checkpoints.sources import LoadOptions, load_model
from latentdiff.config import SamplingConfig
from latentdiff.devices import resolve_device, resolve_dtype
from latentdiff.diffusion.schedules import SchedulerSettings
from latentdiff.models.attention import set_attention_slice
from latentdiff.pipelines.common import decode_latents
from latentdiff.pipelines.metadata import format_parameters
from latentdiff.pipelines.request import GenerationRequest
from latentdiff.pipelines.txt2img import request_sigmas, resolve_seeds, txt2img_latents


@dataclass
class Pipeline:
    """A loaded model and how to sample it. Call it to generate images."""

    components: Components
    name: str
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    vae_tiling: bool = False
    """Decode in overlapping tiles (bounded memory for large images; close to, not equal to,
    a whole decode)."""

    def enable_attention_slicing(self, slice_size: int | None = 1024) -> None:
        """Compute attention in slices of ≤ `slice_size` query rows (None switches it off)."""
        for module in (self.components.unet, self.components.autoencoder):
            set_attention_slice(module, slice_size)

    @property
    def sampling_defaults(self) -> SamplingConfig:
        """What guidance this model uses unless a call says otherwise (its config's `sampling`)."""
        return self.components.config.sampling

    @property
    def device(self) -> torch.device:
        return next(self.components.unet.parameters()).device

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float | None = None,
        sampler: str = "dpmpp_2m",
        seed: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images: int = 1,
        latents: torch.Tensor | None = None,
        schedule: str = "default",
        guidance_rescale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> list[Image.Image]:
        """Generate `num_images` images per prompt (parameter names and order as DESIGN.md's
        contract, diffusers' names; `schedule="karras"` switches the sigma spacing). Give
        `seed` or `generator` (one, or one per image), not both: see `resolve_seeds`. Guidance
        left as None is the model's default (`sampling_defaults`)."""
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
            sampler=sampler,
            schedule=schedule,
            seed=seed,
            height=height,
            width=width,
            num_images=num_images,
        )
        images, _ = self.generate(request, latents=latents, generator=generator)
        return images

    def check(self, request: GenerationRequest) -> None:
        """Raise UsageError if this model cannot honour `request`, before any work starts."""
        request_sigmas(self.components.config, request, self.scheduler)

    def generate(
        self,
        request: GenerationRequest,
        *,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> tuple[list[Image.Image], list[str]]:
        """Images for `request`, and for each the A1111-style `parameters` text to store with it
        (with the values actually used: the model's defaults for what `request` leaves unset)."""
        request = request.with_defaults(self.sampling_defaults)
        seeds = resolve_seeds(request, generator)
        z = txt2img_latents(
            self.components,
            request,
            seeds,
            scheduler=self.scheduler,
            latents=latents,
            callback=callback,
        )
        images = decode_latents(self.components, z, tiled=self.vae_tiling)
        parameters = [
            format_parameters(
                request_for_image(request, k),
                seed=seed,
                width=image.width,
                height=image.height,
                model=self.name,
            )
            for k, (seed, image) in enumerate(zip(seeds, images, strict=True))
        ]
        return images, parameters

    def generate_batched(
        self,
        request: GenerationRequest,
        batch_size: int,
        *,
        callback: Callable[[dict], None] | None = None,
    ) -> Iterator[tuple[int, list[Image.Image], list[str]]]:
        """`generate` in chunks of at most `batch_size` images, yielding (index of the chunk's
        first image, images, parameters); image k still uses seed + k, whatever the chunking."""
        seeds = resolve_seeds(request)
        prompts, negatives = request.prompts, request.negative_prompts
        for start in range(0, len(prompts), batch_size):
            chunk = replace(
                request,
                prompt=prompts[start : start + batch_size],
                negative_prompt=negatives[start : start + batch_size],
                num_images=1,
                seed=seeds[start],
            )
            images, parameters = self.generate(chunk, callback=callback)
            yield start, images, parameters


def request_for_image(request: GenerationRequest, k: int) -> GenerationRequest:
    """The single-image view of image k of a batch request (its own prompt and negative)."""
    return replace(
        request,
        prompt=request.prompts[k],
        negative_prompt=request.negative_prompts[k] or None,
        num_images=1,
    )


def load_pipeline(
    name_or_path: str | os.PathLike = "shapes",
    device: str = "auto",
    torch_dtype: torch.dtype | str = torch.float32,
    **options: Any,
) -> Pipeline:
    """Load the bundled model by name (default "shapes"), a latentdiff or diffusers folder, or
    an original Stable Diffusion single file. `torch_dtype` (a dtype or "fp32", "fp16", "bf16")
    is what the modules compute in; the sampler's latents stay fp32. `options` are
    `LoadOptions` fields, e.g. `tokenizer=` (a CLIP tokenizer folder, which a single file
    lacks) or `prediction_type=`."""
    dtype = resolve_dtype(torch_dtype)
    load_options = LoadOptions(**options)
    components, scheduler = load_model(name_or_path, resolve_device(device), load_options, dtype)
    path = Path(name_or_path)
    return Pipeline(
        components=components,
        name=path.stem if path.is_file() else path.name,
        scheduler=scheduler,
    )
