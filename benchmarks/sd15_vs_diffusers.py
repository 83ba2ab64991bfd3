"""latentdiff against diffusers on the SD 1.5 architecture: one guided denoising step, one decode.

Random seeded weights of `config.sd15_config()` (LDM's zero-initialised layers perturbed, as in
common.py), the same tensors in both implementations: diffusers' `UNet2DConditionModel` and
`AutoencoderKL` are built on the meta device and given our weights, renamed by
`latentdiff.checkpoints.diffusers_layout`, with `assign=True` — they share storage, so a
full-size pair needs one copy of the weights (~3.8 GB in fp32), not two. Both models stay
loaded throughout. The two parts, each timed alternately (ours, theirs, …) after a warm-up
under `torch.inference_mode` with the same thread count:

- **U-Net step**: one Euler step at t = 500 with classifier-free guidance — the U-Net on
  batch 2 (uncond, cond) of 64×64 latents at 512², context (2, 77, 768). Ours through the
  library's path (`Denoiser` → `cfg_denoiser` → `sample_euler`); diffusers' as its
  `StableDiffusionPipeline` runs one `EulerDiscreteScheduler` step (scale the input, U-Net,
  guide ε, x + ε·(σ_next − σ)).
- **VAE decode**: one latent of 64×64 to a 512² image (`Autoencoder.decode` against
  `AutoencoderKL.decode`; with `--vae-tiling`, `decode_tiled` against diffusers'
  `enable_tiling()` with the same tile and a quarter-tile overlap).

Memory: a background thread samples this process's RSS (/proc/self/statm) every ~1 ms during
each call; the peak minus the RSS just before the call (after `gc.collect()`) is the call's
peak. Peak RSS, unlike `ru_maxrss`, is per call, while both models stay resident.

    python benchmarks/sd15_vs_diffusers.py [--preset sd15|tiny] [--size 512] [--repeats 3]
        [--threads 2] [--attention-slice N] [--vae-tiling [TILE]] [--dtype fp32|bf16]
        [--parts unet vae]

A full-size SD 1.5 pair needs 5–6 GB of RAM (fp32, 512²); `--preset tiny --size 64` checks the
script in seconds.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

from collections.abc import Callable

import torch
from common import (
    Measurement,
    alternate,
    machine_summary,
    median,
    perturb_zero_parameters,
    rss_bytes,
    seconds_and_peak_rss,
)
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_to_diffusers,
)
from latentdiff.config import PRESETS, ModelConfig
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.guidance import cfg_denoiser
from latentdiff.diffusion.samplers import sample_euler
from latentdiff.diffusion.schedules import get_training_sigmas
from latentdiff.models.attention import set_attention_slice
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.unet import UNet

GUIDANCE_SCALE = 7.5
TIMESTEP, NEXT_TIMESTEP = 500, 450  # one step of a 20-step schedule, mid-trajectory
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Max |ours − theirs| relative to max |theirs| that float rounding explains.
AGREEMENT = {"fp32": 1e-3, "bf16": 5e-2}
TARGET_RATIO = 1.0  # the target, for time and for peak memory
MiB = 2**20
# The step is written for plain text-to-image ε-prediction models on both sides (no sd21's
# v-prediction, no inpainting U-Net with its extra input channels).
EPSILON_PRESETS = [
    name
    for name, config in ((name, preset()) for name, preset in PRESETS.items())
    if config.diffusion.prediction_type == "epsilon"
    and config.unet.in_channels == config.unet.out_channels
]


# ── The two models, one set of weights ────────────────────────────────────────────────────


def build_models(
    config: ModelConfig, dtype: torch.dtype, parts: list[str], seed: int = 0
) -> dict[str, nn.Module]:
    """Ours ("unet", "vae") with random weights, and diffusers' ("their_…") sharing the tensors."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    models: dict[str, nn.Module] = {}
    if "unet" in parts:
        unet = perturb_zero_parameters(UNet(config.unet), generator).to(dtype)
        models["unet"] = unet
        models["their_unet"] = shared(
            UNet2DConditionModel,
            diffusers_unet_config(config.unet),
            unet_to_diffusers(unet.state_dict(), config.unet),
        )
    if "vae" in parts:
        vae = perturb_zero_parameters(Autoencoder(config.autoencoder), generator).to(dtype)
        models["vae"] = vae
        models["their_vae"] = shared(
            AutoencoderKL,
            diffusers_vae_config(config.autoencoder),
            autoencoder_to_diffusers(vae.state_dict(), config.autoencoder),
        )
    return models


def shared(model_class: type[nn.Module], kwargs: dict, state: dict[str, Tensor]) -> nn.Module:
    """A diffusers model whose parameters are the given tensors themselves (no copy)."""
    with torch.device("meta"):
        model = model_class(**kwargs)
    model.load_state_dict(state, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{model_class.__name__}: no weights for {left[:3]}")
    return model.eval().requires_grad_(False)


# ── The timed calls ───────────────────────────────────────────────────────────────────────


def unet_steps(
    models: dict[str, nn.Module], config: ModelConfig, side: int, dtype: torch.dtype
) -> dict[str, Callable[[], Tensor]]:
    """One guided Euler step, σ(t=500) → σ(t=450), by each implementation."""
    generator = torch.Generator().manual_seed(1)
    sigmas = get_training_sigmas(config.diffusion)[[TIMESTEP, NEXT_TIMESTEP]]  # float64
    x = torch.randn(1, config.autoencoder.latent_channels, side, side, generator=generator)
    x = (x * sigmas[0]).to(dtype)
    tokens, width = config.text_encoder.context_length, config.unet.context_dim
    uncond, cond = torch.randn(2, 1, tokens, width, generator=generator).to(dtype)
    denoiser = cfg_denoiser(
        Denoiser(models["unet"], config.diffusion), cond, uncond, GUIDANCE_SCALE
    )

    def ours() -> Tensor:
        return sample_euler(denoiser, x, sigmas)

    sigma, sigma_next = sigmas.tolist()
    their_unet, context = models["their_unet"], torch.cat([uncond, cond])
    timestep = torch.tensor(float(TIMESTEP))

    def theirs() -> Tensor:
        """StableDiffusionPipeline's loop body with EulerDiscreteScheduler, for one step."""
        model_input = torch.cat([x, x]) / (sigma**2 + 1) ** 0.5  # scheduler.scale_model_input
        eps = their_unet(model_input, timestep, encoder_hidden_states=context).sample
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + GUIDANCE_SCALE * (eps_cond - eps_uncond)
        return x + eps * (sigma_next - sigma)  # scheduler.step: d = (x − (x − σ·ε)) / σ = ε

    return {"latentdiff": ours, "diffusers": theirs}


def vae_decodes(
    models: dict[str, nn.Module], config: ModelConfig, side: int, dtype: torch.dtype, tile: int
) -> dict[str, Callable[[], Tensor]]:
    """One latent decoded to an image by each implementation (tiled if `tile`)."""
    generator = torch.Generator().manual_seed(2)
    shape = (1, config.autoencoder.latent_channels, side, side)
    z = (torch.randn(shape, generator=generator) / config.autoencoder.scaling_factor).to(dtype)
    vae, their_vae = models["vae"], models["their_vae"]
    if tile:
        their_vae.enable_tiling()
        their_vae.tile_latent_min_size = tile
        their_vae.tile_sample_min_size = tile * config.autoencoder.downsample_factor
        their_vae.tile_overlap_factor = 0.25
        return {
            "latentdiff": lambda: vae.decode_tiled(z, tile=tile, overlap=tile // 4),
            "diffusers": lambda: their_vae.decode(z).sample,
        }
    return {"latentdiff": lambda: vae.decode(z), "diffusers": lambda: their_vae.decode(z).sample}


# ── Running and reporting ─────────────────────────────────────────────────────────────────


def run_part(
    title: str,
    contenders: dict[str, Callable[[], Tensor]],
    args: argparse.Namespace,
    *,
    same_math: bool = True,
) -> None:
    """Warm-up (whose outputs are compared), then alternating measured runs; print them.

    `same_math=False` (tiles blended two different ways) reports the difference without a
    verdict.
    """
    with torch.inference_mode():
        outputs = {name: fn().float() for name, fn in contenders.items()}
        results = alternate(contenders, args.repeats, warmup=0, measure=seconds_and_peak_rss)
    print(title)
    report_part(results)
    ours, theirs = outputs["latentdiff"], outputs["diffusers"]
    difference = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    if same_math:
        verdict = "agree" if difference <= AGREEMENT[args.dtype] * scale else "DISAGREE"
    else:
        verdict = "no verdict, the two blend their tiles differently"
    print(f"  max abs difference {difference:.3g} (outputs up to {scale:.3g}): {verdict}")


def report_part(results: dict[str, list[Measurement]]) -> None:
    for name, runs in results.items():
        times = [m.seconds for m in runs]
        peak = median([m.peak_rss for m in runs]) / MiB
        print(
            f"  {name:<10} median {median(times):.3f} s   peak RSS +{peak:,.0f} MiB   runs "
            + " ".join(f"{t:.3f}" for t in times)
        )
    ours, theirs = results["latentdiff"], results["diffusers"]
    time_ratio = median([a.seconds / b.seconds for a, b in zip(ours, theirs, strict=True)])
    our_peak = median([m.peak_rss for m in ours])
    their_peak = median([m.peak_rss for m in theirs])
    peak_ratio = our_peak / their_peak if their_peak > 0 else float("nan")
    met = {True: "met", False: "missed"}
    print(
        f"  latentdiff / diffusers: time {time_ratio:.3f} (median of per-pair ratios), "
        f"peak RSS {peak_ratio:.3f}; targets ≤ {TARGET_RATIO}: time "
        f"{met[time_ratio <= TARGET_RATIO]}, memory {met[our_peak <= their_peak]}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset",
        default="sd15",
        choices=EPSILON_PRESETS,
        help="architecture (tiny: a check in seconds)",
    )
    parser.add_argument("--size", type=int, default=None, help="image side (default: preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    parser.add_argument(
        "--attention-slice",
        type=int,
        default=None,
        metavar="N",
        help="latentdiff only: attention in slices of N query rows (diffusers keeps its default)",
    )
    parser.add_argument(
        "--vae-tiling",
        type=int,
        nargs="?",
        const=64,
        default=0,
        metavar="TILE",
        help="tiled decoding on both sides, TILE latent pixels (default 64), overlap TILE/4",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--parts", nargs="+", choices=["unet", "vae"], default=["unet", "vae"])
    args = parser.parse_args()
    config = PRESETS[args.preset]()
    args.size = args.size or config.sample_size
    if args.size <= 0 or args.size % config.size_multiple:
        parser.error(f"--size must be a positive multiple of {config.size_multiple}")
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.attention_slice is not None and args.attention_slice < 1:
        parser.error("--attention-slice must be at least 1")
    if args.vae_tiling < 0:
        parser.error("--vae-tiling must be a positive tile size")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config, dtype = PRESETS[args.preset](), DTYPES[args.dtype]
    side = args.size // config.autoencoder.downsample_factor
    models = build_models(config, dtype, args.parts)
    ours = [models[name] for name in ("unet", "vae") if name in models]
    for model in ours:
        set_attention_slice(model, args.attention_slice)
    weights = sum(p.numel() * p.element_size() for model in ours for p in model.parameters())
    print(machine_summary())
    print(
        f"{args.preset} architecture, random weights ({weights / MiB:,.0f} MiB, shared by both), "
        f"{args.dtype}, {args.size}×{args.size} images, {args.threads} torch threads, "
        f"{args.repeats} alternating runs each after a warm-up; attention slice "
        f"{args.attention_slice or 'off'} (latentdiff), VAE tiling "
        f"{f'{args.vae_tiling} latent px' if args.vae_tiling else 'off'}; "
        f"process RSS {rss_bytes() / MiB:,.0f} MiB"
    )
    if "unet" in args.parts:
        title = (
            f"U-Net step, guidance {GUIDANCE_SCALE:g}: batch 2 of {side}×{side} latents, "
            f"context (2, {config.text_encoder.context_length}, {config.unet.context_dim})"
        )
        run_part(title, unet_steps(models, config, side, dtype), args)
    if "vae" in args.parts:
        tiled = (
            f", tiles {args.vae_tiling}, overlap {args.vae_tiling // 4}" if args.vae_tiling else ""
        )
        title = f"VAE decode: {side}×{side} latent → {args.size}×{args.size} image{tiled}"
        contenders = vae_decodes(models, config, side, dtype, args.vae_tiling)
        run_part(title, contenders, args, same_math=not args.vae_tiling or side <= args.vae_tiling)


if __name__ == "__main__":
    main()
