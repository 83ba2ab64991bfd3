"""`latentdiff info` and `latentdiff convert`: inspect and rewrite Stable Diffusion checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latentdiff.errors import UsageError

# Names only: the CLI imports torch lazily (latentdiff.devices.DTYPES maps them to dtypes).
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "info",
        help="describe a checkpoint",
        description="Print a checkpoint's format, detected version, prediction type, parameter "
        "counts and dtype (a latentdiff or diffusers folder, or an SD single file).",
    )
    info.add_argument("path", help="checkpoint file or folder (or a bundled model's name)")
    add_load_options(info)
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between diffusers folders and SD single files",
        description="Rewrite a Stable Diffusion checkpoint as a diffusers folder or an original "
        "single .safetensors file (CompVis layout), or a latentdiff model folder as a new "
        "latentdiff folder (e.g. with --vae baked in). Round trips are lossless.",
    )
    convert.add_argument(
        "input", help="diffusers folder, single file (.safetensors/.ckpt) or latentdiff folder"
    )
    convert.add_argument("output", help="folder (--to diffusers|latentdiff) or .safetensors file")
    convert.add_argument("--to", required=True, choices=("diffusers", "single-file", "latentdiff"))
    convert.add_argument(
        "--dtype", default="keep", choices=("keep", *DTYPE_NAMES), help="weights dtype"
    )
    add_load_options(convert)
    convert.set_defaults(func=run_convert)


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The flags that tell the loader what a checkpoint cannot say about itself."""
    parser.add_argument(
        "--tokenizer", default=None, help="CLIP tokenizer folder (single files hold none)"
    )
    parser.add_argument(
        "--version", dest="sd_version", choices=("sd1", "sd2"), default=None,
        help="override the detected SD version (single files)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-type", choices=("epsilon", "v_prediction"), default=None,
        help="override the detected prediction type",
    )  # fmt: skip
    parser.add_argument(
        "--inpainting", action=argparse.BooleanOptionalAction, default=None,
        help="assert the file is (not) an inpainting model (single files; checked)",
    )  # fmt: skip
    parser.add_argument(
        "--ema", action="store_true", help="use a full checkpoint's EMA U-Net weights"
    )
    parser.add_argument("--variant", default=None, help='diffusers weight variant, e.g. "fp16"')
    parser.add_argument(
        "--vae", default=None,
        help="use this autoencoder instead of the model's (same architecture): a `train "
        "autoencoder` run, a diffusers AutoencoderKL folder (e.g. sd-vae-ft-mse) or an SD VAE "
        "file (e.g. vae-ft-mse-840000-ema-pruned.safetensors)",
    )  # fmt: skip


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `LoadOptions` fields the flags of `add_load_options` set."""
    return {
        "tokenizer": args.tokenizer,
        "version": args.sd_version,
        "prediction_type": args.prediction_type,
        "inpainting": args.inpainting,
        "use_ema": args.ema,
        "variant": args.variant,
        "vae": args.vae,
    }


def run_info(args: argparse.Namespace) -> None:
    from latentdiff.checkpoints.sources import LoadOptions, describe, read_model

    for line in describe(read_model(args.path, LoadOptions(**load_options(args)))):
        print(line)


def run_convert(args: argparse.Namespace) -> None:
    from latentdiff.checkpoints.sources import LoadOptions, read_model, write_model
    from latentdiff.devices import resolve_dtype

    output = Path(args.output)
    if output.exists() and (output.is_file() or any(output.iterdir())):
        raise UsageError(f"{output} exists; choose a new output path")
    weights = read_model(args.input, LoadOptions(**load_options(args)))
    if (weights.format == "latentdiff") != (args.to == "latentdiff"):
        raise UsageError(
            f"{args.input}: convert writes latentdiff folders from latentdiff folders, and "
            "diffusers folders and single files from Stable Diffusion checkpoints"
        )
    write_model(
        weights,
        output,
        to=args.to,
        dtype=None if args.dtype == "keep" else resolve_dtype(args.dtype),
    )
    print(f"wrote {output} ({args.to})")
