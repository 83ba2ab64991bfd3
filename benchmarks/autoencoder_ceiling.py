"""The adherence a model could reach at best through its autoencoder.

Renders one scene for every prompt of the evaluation suite (drawn by the world to satisfy it),
scores the renders, then scores the same renders after an encode → decode round trip through
the model's autoencoder (posterior mode). The first row checks the evaluator (it should be
near 1.0); the second is the ceiling the latent space puts on any U-Net trained in it, with
`shape_kept`: per shape and size, the share of single-object renders that still read as one
object of their shape (squares lose their corners first).

    python benchmarks/autoencoder_ceiling.py --model shapes
    python benchmarks/autoencoder_ceiling.py --autoencoder RUN   # a `train autoencoder` run
    python benchmarks/autoencoder_ceiling.py --autoencoder RUN --checkpoint 1000 --preset shapes

`--latent-noise 0.05,0.1` adds round trips with Gaussian noise of that many standard deviations
(per latent channel) added to the latents: how robust the latent space is to a U-Net's small
errors.

`--sigmas 0.1,0.3,1` adds, per σ, the same renders after one step of the model's U-Net: encode,
add noise of level σ, denoise once with the prompt (its conditional prediction, unguided),
decode. What these rows lose beyond the round trip is the U-Net's, at that noise level.

    python benchmarks/autoencoder_ceiling.py --model shapes --sigmas 0.05,0.1,0.3,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import float_list

from latentdiff.checkpoints.bundle import load_autoencoder_run
from latentdiff.config import PRESETS
from latentdiff.devices import resolve_device
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.evaluation.detector import detect
from latentdiff.evaluation.scoring import score
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.pipelines.common import (
    decode_latents,
    encode_images,
    encode_prompt,
    images_to_tensor,
    tensor_to_images,
)
from latentdiff.pipelines.pipeline import Pipeline, load_pipeline
from latentdiff.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    load_module_state,
    load_weights,
    step_dir_name,
)
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import sample_scene


def suite_renders(prompts: list[str], size: int, seed: int) -> np.ndarray:
    """One render per prompt, a scene the world draws to satisfy it, (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(sample_scene(parse_caption(p), rng), size) for p in prompts])


def encode_modes(
    autoencoder: Autoencoder, images: np.ndarray, batch_size: int = 50
) -> torch.Tensor:
    """Posterior modes of `images`, in the autoencoder's own units (no latent normalisation:
    it cancels in a round trip)."""
    parameter = next(autoencoder.parameters())
    modes = []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size])
        with torch.no_grad():
            modes.append(autoencoder.encode(x.to(parameter.device, parameter.dtype)).mode())
    return torch.cat(modes)


def decode(autoencoder: Autoencoder, z: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """Latents → 8-bit images."""
    out = []
    for start in range(0, len(z), batch_size):
        with torch.no_grad():
            out.append(tensor_to_images(autoencoder.decode(z[start : start + batch_size])))
    return np.concatenate(out)


def latent_noise_rows(
    autoencoder: Autoencoder, z: torch.Tensor, levels: list[float], seed: int
) -> dict[str, np.ndarray]:
    """Per level s, the round trip of the posterior modes `z` with Gaussian noise of s × each
    channel's standard deviation (over `z`) added before decoding: how small an error in the
    latents the images survive, in the units a U-Net trained on normalised latents errs in."""
    std = z.std(dim=(0, 2, 3), keepdim=True)
    rows = {}
    for level in levels:
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z)
        rows[f"round trip + latent noise {level:g}"] = decode(autoencoder, z + level * std * noise)
    return rows


def one_step_rows(
    pipeline: Pipeline,
    prompts: list[str],
    images: np.ndarray,
    sigmas: list[float],
    seed: int,
    batch_size: int = 50,
) -> dict[str, np.ndarray]:
    """Per σ, the images after encode → + σ·ε → one conditional denoising step → decode, 8-bit.

    The latents and text contexts are computed once, for every σ."""
    components = pipeline.components
    device = next(components.unet.parameters()).device
    denoiser = Denoiser(components.unet, components.config.diffusion)
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        latents = [
            encode_images(components, images_to_tensor(images[i : i + batch_size]).to(device))
            for i in starts
        ]
        contexts = [encode_prompt(components, prompts[i : i + batch_size]) for i in starts]
    rows = {}
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        out = []
        for z, context in zip(latents, contexts, strict=True):
            noise = torch.randn(z.shape, generator=generator).to(device)
            levels = torch.full((len(z),), sigma, device=device)
            with torch.no_grad():
                denoised = denoiser(z + sigma * noise, levels, context)
            out.extend(np.asarray(image) for image in decode_latents(components, denoised))
        rows[f"one U-Net step from sigma {sigma:g}"] = np.stack(out)
    return rows


def shape_kept(prompts: list[str], renders: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Per "shape size" of the single-object renders: the share whose round trip is detected as
    exactly one object of that shape (the size is the render's, named or not)."""
    kept: dict[str, list[bool]] = {}
    for prompt, render, image in zip(prompts, renders, images, strict=True):
        spec = parse_caption(prompt)
        if spec.kind != "single":
            continue
        shape = spec.objects[0].shape
        (truth,) = detect(render).objects
        objects = detect(image).objects
        ok = len(objects) == 1 and objects[0].shape == shape
        kept.setdefault(f"{shape} {truth.size}", []).append(ok)
    return {key: round(sum(v) / len(v), 3) for key, v in sorted(kept.items())}


def load_autoencoder(args: argparse.Namespace) -> Autoencoder:
    """The autoencoder of `--autoencoder RUN` (at `--checkpoint STEP`) if given, else of
    `--model`."""
    if args.checkpoint is not None:
        return checkpoint_autoencoder(args).to(resolve_device(args.device))
    if args.autoencoder:
        return load_autoencoder_run(args.autoencoder).to(resolve_device(args.device))
    return load_pipeline(args.model, device=args.device).components.autoencoder


def checkpoint_autoencoder(args: argparse.Namespace) -> Autoencoder:
    """A run's autoencoder at a training checkpoint (its EMA weights where it keeps them), of
    the architecture of `--preset`: checkpoints hold weights only."""
    folder = Path(args.autoencoder) / "checkpoints" / step_dir_name(args.checkpoint)
    weights = folder / EMA_FILE if (folder / EMA_FILE).exists() else folder / MODEL_FILE
    model = Autoencoder(PRESETS[args.preset]().autoencoder)
    load_module_state(model, load_weights(weights)[0], weights)
    return model.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--autoencoder", help="a `train autoencoder` run instead of a model")
    parser.add_argument("--checkpoint", type=int, help="with --autoencoder: this step's weights")
    parser.add_argument("--preset", default="shapes", choices=sorted(PRESETS),
                        help="with --checkpoint: the run's architecture")  # fmt: skip
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigmas", type=float_list, default=[],
                        help="with --model: also one U-Net step from these σ")  # fmt: skip
    parser.add_argument("--latent-noise", type=float_list, default=[],
                        help="also round trips with noise of these × each latent channel's std")  # fmt: skip
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.checkpoint is not None and not args.autoencoder:
        parser.error("--checkpoint needs --autoencoder RUN")
    if args.sigmas and args.autoencoder:
        parser.error("--sigmas needs a model's U-Net: use --model, not --autoencoder")
    prompts = evaluation_suite()
    renders = suite_renders(prompts, args.size, args.seed)
    # With --sigmas the model is loaded once, for its autoencoder and its U-Net.
    pipeline = load_pipeline(args.model, device=args.device) if args.sigmas else None
    autoencoder = pipeline.components.autoencoder if pipeline else load_autoencoder(args)
    modes = encode_modes(autoencoder, renders)  # once, for the round trip and the noisy ones
    rows = {"renders": renders, "autoencoder round trip": decode(autoencoder, modes)}
    rows |= latent_noise_rows(autoencoder, modes, args.latent_noise, args.seed)
    if pipeline:
        rows |= one_step_rows(pipeline, prompts, renders, args.sigmas, args.seed)
    for name, images in rows.items():
        report = score(prompts, list(images))
        source = {"autoencoder": args.autoencoder} if args.autoencoder else {"model": args.model}
        if args.checkpoint is not None:
            source["checkpoint"] = args.checkpoint
        shapes = {"shape_kept": shape_kept(prompts, renders, images)} if name != "renders" else {}
        print(json.dumps(source | {"images": name} | report.to_dict() | shapes))


if __name__ == "__main__":
    main()
