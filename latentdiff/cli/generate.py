"""`latentdiff generate`: text to image, one prompt or a file of prompts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from latentdiff.cli.checkpoints import DTYPE_NAMES, add_load_options, load_options
from latentdiff.errors import UsageError
from latentdiff.pipelines.request import SCHEDULES, GenerationRequest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images from text",
        description="Generate images from text with the bundled model or a model folder.",
    )
    parser.add_argument("prompt", nargs="?", help="the text prompt (or use --prompts-file)")
    parser.add_argument("--negative-prompt", default=None, help="text to steer away from")
    parser.add_argument(
        "--model", default="shapes", help="bundled model, model/diffusers folder or SD single file"
    )
    add_sampling_options(parser, seed=None, seed_help="image k uses seed+k (default: random)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--output", default="out.png", help="output PNG (single prompt)")
    parser.add_argument("--prompts-file", default=None, help="one prompt per line → --outdir")
    parser.add_argument("--outdir", default=None, help="folder for 00000.png, 00001.png, …")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", default="fp32", choices=DTYPE_NAMES,
        help="what the model computes in (fp16 halves a GPU's memory; the sampler stays fp32)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--attention-slice", type=int, default=None, metavar="N",
        help="compute attention N query rows at a time (less memory)",
    )  # fmt: skip
    parser.add_argument(
        "--vae-tiling", action="store_true", help="decode in tiles (large images, less memory)"
    )
    add_load_options(parser)
    parser.set_defaults(func=run_generate)


def add_sampling_options(
    parser: argparse.ArgumentParser, *, seed: int | None, seed_help: str
) -> None:
    """The flags of a `GenerationRequest` (`sampling_request`), shared by `generate` and
    `evaluate model`: sampler, σ spacing, steps, guidance, seed and size."""
    parser.add_argument(
        "--sampler", default="dpmpp_2m", help="ddpm, ddim, euler, euler_a, heun, dpmpp_2m"
    )
    parser.add_argument("--schedule", default="default", choices=SCHEDULES, help="sigma spacing")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    add_guidance_options(parser)
    parser.add_argument("--seed", type=int, default=seed, help=seed_help)
    parser.add_argument("--width", type=int, default=None, help="pixels (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="pixels (default: the model's)")


def sampling_request(
    args: argparse.Namespace, prompt: str | list[str], **fields
) -> GenerationRequest:
    """The request of `add_sampling_options`' flags for `prompt`, with `fields` besides."""
    return GenerationRequest(
        prompt=prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=guidance_interval(args),
        sampler=args.sampler,
        schedule=args.schedule,
        seed=args.seed,
        height=args.height,
        width=args.width,
        **fields,
    )


def add_guidance_options(parser: argparse.ArgumentParser, *, scale: bool = True) -> None:
    """Classifier-free guidance options, shared by `generate`, `evaluate model` and the
    benchmarks; each left unset is the model's default (its config's `sampling`: guidance 5, no
    rescale, every step unless the model says otherwise). `scale=False` leaves out
    `--guidance-scale`, for a caller that takes several scales."""
    if scale:
        parser.add_argument(
            "--guidance-scale", type=float, default=None,
            help="classifier-free guidance (default: the model's; 5 for SD checkpoints)",
        )  # fmt: skip
    parser.add_argument(
        "--guidance-rescale", type=float, default=None,
        help="φ in [0, 1]: pull the guided output's std to the conditional one's (Lin et al.; "
        "default: the model's, 0 for SD checkpoints)",
    )  # fmt: skip
    parser.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="guide only at noise levels σ in (LO, HI] (Kynkäänniemi et al.); HI may be inf; "
        "0 inf guides every step (default: the model's, every step for SD checkpoints)",
    )  # fmt: skip


def guidance_interval(args: argparse.Namespace) -> tuple[float, float] | None:
    return None if args.guidance_interval is None else tuple(args.guidance_interval)


def run_generate(args: argparse.Namespace) -> None:
    prompts = plan_prompts(args)
    request = sampling_request(
        args, prompts, negative_prompt=args.negative_prompt, num_images=args.num_images
    )
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    # Validate before the (slow) model load, so bad input fails at once.
    from latentdiff.diffusion.samplers import SAMPLERS
    from latentdiff.pipelines.pipeline import load_pipeline

    request.validate(1, tuple(SAMPLERS))
    paths = plan_paths(args, len(request.prompts))
    if args.attention_slice is not None and args.attention_slice < 1:
        raise UsageError(f"--attention-slice must be at least 1, got {args.attention_slice}")
    pipeline = load_pipeline(
        args.model, device=args.device, torch_dtype=args.dtype, **load_options(args)
    )
    pipeline.vae_tiling = args.vae_tiling
    if args.attention_slice:
        pipeline.enable_attention_slicing(args.attention_slice)
    # Every check before the progress bar, so that bad input is exactly one line on stderr.
    pipeline.check(request)
    with tqdm(total=len(paths) * args.steps, unit="step", disable=args.no_progress) as progress:

        def advance(info: dict) -> None:
            # A step's callback sees the whole chunk's latents: advance by the images it holds.
            progress.update(info["x"].shape[0])

        for start, images, parameters in pipeline.generate_batched(
            request, args.batch_size, callback=advance
        ):
            outputs = paths[start : start + len(images)]
            for image, text, path in zip(images, parameters, outputs, strict=True):
                save_png(image, text, path)


def plan_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts to generate: the positional one, or the lines of --prompts-file."""
    if args.prompts_file:
        if args.prompt:
            raise UsageError("give a prompt or --prompts-file, not both")
        if not args.outdir:
            raise UsageError("--prompts-file needs --outdir")
        return read_prompts(Path(args.prompts_file))
    if args.outdir:
        raise UsageError("--outdir goes with --prompts-file; for one prompt use --output")
    if not args.prompt:
        raise UsageError("give a prompt, or --prompts-file with --outdir")
    return [args.prompt]


def plan_paths(args: argparse.Namespace, n: int) -> list[Path]:
    """The file each of the `n` images goes to; the output folder is checked (or made) here."""
    if args.prompts_file:
        outdir = Path(args.outdir)
        ensure_writable_dir(outdir, create=True)
        return [outdir / f"{k:05d}.png" for k in range(n)]
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {output}")
    ensure_writable_dir(output.parent, create=False)
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{k:05d}.png") for k in range(n)]


def read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read prompts file {path}: {error}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"prompts file {path} has no prompts")
    return prompts


def ensure_writable_dir(folder: Path, *, create: bool) -> None:
    folder = folder if str(folder) else Path(".")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create output folder {folder}: {error.strerror}") from None
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output folder {folder} is not writable")


def save_png(image: Image.Image, parameters: str, path: Path) -> None:
    """Write atomically with the generation parameters in the `parameters` text chunk."""
    from latentdiff.fileio import atomic_write
    from latentdiff.pipelines.metadata import png_info

    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=png_info(parameters)))
