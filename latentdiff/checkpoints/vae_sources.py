"""Autoencoders swapped in for a checkpoint's own (`--vae`, `LoadOptions.vae`).

Stable Diffusion users replace a model's VAE with a fine-tuned one that shares its latent space
(SD's ft-MSE and ft-EMA decoders), so every U-Net trained in that space stays valid. Read here:

- a `latentdiff train autoencoder` run folder (`bundle.read_autoencoder_run`);
- a diffusers `AutoencoderKL` folder: `config.json` + `diffusion_pytorch_model[.variant]
  .safetensors` (or sharded, or a legacy weights-only `.bin`), e.g. `stabilityai/sd-vae-ft-mse`
  or a diffusers SD folder's `vae/` (the SD folder itself stands for its `vae/`);
- a single file in the original CompVis layout (`vae-ft-mse-840000-ema-pruned.safetensors`,
  `.ckpt`): `encoder.down.0.block.0.*`, possibly under `first_stage_model.` — then every other
  key is ignored, so a whole SD checkpoint gives its VAE, as in diffusers' `from_single_file` —
  and possibly with the autoencoder's training loss (`loss.*`) and EMA bookkeeping
  (`model_ema.*`), which are ignored;
- a single file in diffusers' layout (`encoder.down_blocks.0.resnets.0.*`).

Keys are converted by the functions that read whole checkpoints (compvis_layout.py,
diffusers_layout.py); files are opened as single_file.py opens them (pickles only through the
weights-only unpickler). The replacement must have the model's architecture: a folder's config
is compared field by field, its latent normalisation aside — the model keeps its own, which its
U-Net was trained with; a single file holds no config, so its keys and shapes are checked
against the model's autoencoder. Everything is checked before the model is built.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from torch import Tensor

from latentdiff.checkpoints.bundle import (
    AUTOENCODER_CONFIG_FILE,
    AUTOENCODER_FILE,
    read_autoencoder_run,
)
from latentdiff.checkpoints.compvis_layout import VAE_PREFIX, autoencoder_from_compvis
from latentdiff.checkpoints.diffusers_folder import (
    CONFIG,
    DIFFUSERS_WEIGHTS,
    MODEL_INDEX,
    VAE,
    holds_variant,
    read_autoencoder_config,
    read_autoencoder_weights,
)
from latentdiff.checkpoints.diffusers_layout import autoencoder_from_diffusers
from latentdiff.checkpoints.single_file import EMA_PREFIX, open_weights
from latentdiff.config import AutoencoderConfig
from latentdiff.errors import UsageError

NORMALISATION = frozenset({"scaling_factor", "latents_mean", "latents_std", "kl_weight"})
"""AutoencoderConfig fields that may differ: how latents are scaled for diffusion (the model's
own values are kept) and the training loss's KL weight."""
IGNORED_PREFIXES = ("loss.", EMA_PREFIX)
"""Keys of a CompVis VAE file that decoding does not use: LPIPS/discriminator, EMA buffers."""


def read_vae(
    path: str | os.PathLike,
    like: AutoencoderConfig,
    *,
    variant: str | None = None,
    model: str | os.PathLike = "the model",
) -> tuple[dict[str, Tensor], str]:
    """The weights (latentdiff's layout, file dtypes) of the autoencoder at `path`, and what
    kind of source it was; `like` is the autoencoder of `model` it must match.

    `variant` (e.g. "fp16") picks a diffusers folder's `*.{variant}.*` weights where it has
    them, else its default ones: the variant is the model's, a VAE repository may not ship it.
    """
    path = Path(path)
    if path.is_file():
        return _read_file(path, like, model)
    if not path.is_dir():
        raise UsageError(f"no autoencoder at {path}")
    if (path / AUTOENCODER_FILE).exists() or (path / AUTOENCODER_CONFIG_FILE).exists():
        config, state = read_autoencoder_run(path)
        _check_architecture(config, like, path, model)
        return state, "train autoencoder run"
    if (path / MODEL_INDEX).is_file() and (path / VAE).is_dir():
        path = path / VAE
    if (path / CONFIG).is_file() and any(path.glob(DIFFUSERS_WEIGHTS + "*")):
        config = read_autoencoder_config(path)
        _check_architecture(config, like, path, model)
        if variant is not None and not holds_variant(path, variant):
            variant = None
        return read_autoencoder_weights(path, like, variant), "diffusers AutoencoderKL folder"
    raise UsageError(
        f"{path} holds no autoencoder: expected a finished `train autoencoder` run "
        f"({AUTOENCODER_FILE}), a diffusers AutoencoderKL folder ({CONFIG} + "
        f"{DIFFUSERS_WEIGHTS}.safetensors) or a VAE file (.safetensors, .ckpt)"
    )


def _check_architecture(
    config: AutoencoderConfig, like: AutoencoderConfig, path: Path, model: str | os.PathLike
) -> None:
    for f in fields(config):
        theirs, ours = getattr(config, f.name), getattr(like, f.name)
        if f.name not in NORMALISATION and theirs != ours:
            raise UsageError(
                f"--vae {path}: its {f.name} = {theirs!r} differs from {model}'s autoencoder "
                f"({ours!r})"
            )


def _read_file(
    path: Path, like: AutoencoderConfig, model: str | os.PathLike
) -> tuple[dict[str, Tensor], str]:
    """A CompVis- or diffusers-layout VAE file (or a whole SD checkpoint's `first_stage_model.*`)."""
    with open_weights(path) as (shapes, _, load):
        prefix = VAE_PREFIX if any(key.startswith(VAE_PREFIX) for key in shapes) else ""
        keys = [
            key
            for key in shapes
            if key.startswith(prefix) and not key[len(prefix) :].startswith(IGNORED_PREFIXES)
        ]
        if prefix + "encoder.conv_in.weight" not in keys:
            raise UsageError(
                f"{path}: not a Stable Diffusion VAE (no {prefix}encoder.conv_in.weight key)"
            )
        diffusers = any(key.startswith(prefix + "encoder.down_blocks.") for key in keys)
        state = {key: load(key) for key in keys}
    try:
        if diffusers:
            unprefixed = {key[len(prefix) :]: tensor for key, tensor in state.items()}
            return autoencoder_from_diffusers(unprefixed, like), "diffusers-layout VAE file"
        return autoencoder_from_compvis(state, like, prefix), "CompVis VAE file"
    except UsageError as error:  # a missing, unexpected or misshapen key
        raise UsageError(f"--vae {path}: does not fit {model}'s autoencoder: {error}") from None
