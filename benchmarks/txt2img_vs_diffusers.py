"""latentdiff's txt2img pipeline against diffusers' StableDiffusionPipeline, same model and work.

Both sides get the same weights (diffusers' `UNet2DConditionModel` and `AutoencoderKL` loaded
through `latentdiff.checkpoints.diffusers_layout`), the same initial latents, the same text
context (latentdiff's text encoder, run inside each timed call, fed to diffusers as
`prompt_embeds`), and the same sampler: `dpmpp_2m` against `DPMSolverMultistepScheduler` built
from the scheduler config our diffusers export writes for the model. Runs alternate (ours,
theirs, ours, …) in one process under `torch.inference_mode` with the same thread count, so load
drifts hit both alike. The default is random weights of the shapes preset: the bundled model's
latents are normalised per channel (`latents_mean`/`latents_std`), which diffusers'
StableDiffusionPipeline does not apply before decoding, so with `--model` the timing holds but
the pixels differ.

    python benchmarks/txt2img_vs_diffusers.py [--model PATH] [--steps 20] [--batch 1]
                                              [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no warnings about unused extras

import numpy as np
import torch
from common import alternate, bench_pipeline, machine_summary, median
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers import StableDiffusionPipeline as DiffusersPipeline
from diffusers.utils import logging as diffusers_logging

from latentdiff.checkpoints.bundle import Components
from latentdiff.checkpoints.diffusers_folder import diffusers_scheduler_config
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_to_diffusers,
)
from latentdiff.diffusion.schedules import SchedulerSettings
from latentdiff.pipelines.common import encode_prompt
from latentdiff.pipelines.pipeline import Pipeline

PROMPT = "a red circle on the left"
GUIDANCE_SCALE = 5.0
TARGET_SECONDS = 1.0  # one 64×64 image, 20 steps, warm, on 2 cores
TARGET_RATIO = 1.0

AGREEMENT = 2  # max abs pixel difference (of 255) that float rounding explains


def diffusers_pipeline(components: Components, settings: SchedulerSettings) -> DiffusersPipeline:
    """diffusers' pipeline over our U-Net and autoencoder weights (text comes as embeddings)."""
    config = components.config
    unet = UNet2DConditionModel(**diffusers_unet_config(config.unet))
    unet.load_state_dict(unet_to_diffusers(components.unet.state_dict(), config.unet))
    vae = AutoencoderKL(**diffusers_vae_config(config.autoencoder))
    vae.load_state_dict(
        autoencoder_to_diffusers(components.autoencoder.state_dict(), config.autoencoder)
    )
    pipe = DiffusersPipeline(
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        unet=unet.eval(),
        # The scheduler_config.json our diffusers export writes: DPM-Solver reads it as
        # `dpmpp_2m` reads the settings (the parity tests check that).
        scheduler=DPMSolverMultistepScheduler.from_config(
            diffusers_scheduler_config(config.diffusion, settings)
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_ours(pipe: Pipeline, latents: torch.Tensor, steps: int) -> np.ndarray:
    with torch.inference_mode():
        images = pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            # diffusers' guidance, whatever the model's own defaults: plain CFG at every step.
            guidance_rescale=0.0,
            guidance_interval=(0.0, math.inf),
            sampler="dpmpp_2m",
            seed=0,
            num_images=len(latents),
            latents=latents,
        )
    return np.stack([np.asarray(image) for image in images])


def run_theirs(
    pipe: DiffusersPipeline, components: Components, latents: torch.Tensor, steps: int
) -> np.ndarray:
    """diffusers as its users call it, after our text encoder (the work our pipeline also does)."""
    batch = len(latents)
    with torch.inference_mode():
        cond = encode_prompt(components, [PROMPT] * batch)
        uncond = encode_prompt(components, [""] * batch)
        size = components.config.sample_size
        images = pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            height=size,
            width=size,
            latents=latents,
        ).images
    return np.stack([np.asarray(image) for image in images])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: random shapes)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1, help="images per call (U-Net sees 2×)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each, after warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # the disabled safety checker is intended
    ours = bench_pipeline(args.model)
    components = ours.components
    theirs = diffusers_pipeline(components, ours.scheduler)
    config = components.config
    side = config.sample_size // config.autoencoder.downsample_factor
    latents = torch.randn(
        args.batch,
        config.autoencoder.latent_channels,
        side,
        side,
        generator=torch.Generator().manual_seed(0),
    )

    difference = np.abs(
        run_ours(ours, latents, args.steps).astype(int)
        - run_theirs(theirs, components, latents, args.steps).astype(int)
    ).max()
    times = alternate(
        {
            "latentdiff": lambda: run_ours(ours, latents, args.steps),
            "diffusers": lambda: run_theirs(theirs, components, latents, args.steps),
        },
        runs=args.runs,
    )
    report(args, config.sample_size, times, difference)


def report(
    args: argparse.Namespace, size: int, times: dict[str, list[float]], difference: int
) -> None:
    print(machine_summary())
    print(
        f"txt2img {size}×{size}, dpmpp_2m, {args.steps} steps, guidance {GUIDANCE_SCALE:g}, "
        f"batch {args.batch}, {args.threads} torch threads, {args.runs} alternating runs each"
    )
    for name, values in times.items():
        print(
            f"  {name:<10} median {median(values):.3f} s   runs "
            + " ".join(f"{t:.3f}" for t in values)
        )
    ratios = [a / b for a, b in zip(times["latentdiff"], times["diffusers"], strict=True)]
    ratio = median(ratios)
    print(
        f"  latentdiff / diffusers: {ratio:.3f} (median of per-pair ratios; target ≤ {TARGET_RATIO})"
    )
    verdict = "agree" if difference <= AGREEMENT else "DISAGREE"
    print(f"  max abs pixel difference: {difference} / 255 (images {verdict})")
    if args.steps == 20 and args.batch == 1 and args.threads == 2:
        ours = median(times["latentdiff"])
        verdict = "met" if ours <= TARGET_SECONDS else "missed"
        print(f"  target one image ≤ {TARGET_SECONDS} s on 2 threads: {verdict} ({ours:.3f} s)")


if __name__ == "__main__":
    main()
