"""Diffusers folders (`model_index.json` + one subfolder per component) ↔ latentdiff.

This is the layout the Hugging Face hub and most tools share for Stable Diffusion:

    unet/          config.json + diffusion_pytorch_model[.fp16].safetensors   (UNet2DConditionModel)
    vae/           config.json + diffusion_pytorch_model[.fp16].safetensors   (AutoencoderKL)
    text_encoder/  config.json + model[.fp16].safetensors                      (CLIPTextModel)
    tokenizer/     vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json
    scheduler/     scheduler_config.json

Reading needs neither diffusers nor transformers: the configs are plain JSON, mapped onto our
config dataclasses (diffusers_configs.py), and the weights are renamed into latentdiff's key layout
(diffusers_layout.py, transformers_layout.py). A config key that would change the computation in
a way our modules cannot reproduce is refused, naming the key — silently running a different
network would be worse than not running. Older folders hold `.bin` pickles; those are read only
with `torch.load(weights_only=True)`, which cannot run code, and a pickle that needs more is
refused.

SD 2's text encoder is OpenCLIP ViT-H taken at its penultimate layer. diffusers stores only the
23 layers that output needs and reads the last of them (`output_layer="last"`); an original
single file holds all 24 (`output_layer="penultimate"`). The writer follows diffusers: the
unused 24th layer is dropped (`drop_unused_text_layer`), which leaves the context the U-Net
sees unchanged (only CLIP's pooled output, which SD does not use, would differ).

Writing builds the whole folder under a hidden temporary name beside the target and renames it
into place at the end, so a crash leaves either no folder or a complete one.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentdiff.checkpoints.bundle import empty_modules
from latentdiff.checkpoints.diffusers_configs import (
    autoencoder_config_from_diffusers,
    config_errors_in,
    optional_int,
    read_json,
    text_encoder_config_from_transformers,
    unet_config_from_diffusers,
)
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_from_diffusers,
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from latentdiff.checkpoints.transformers_layout import (
    text_encoder_from_transformers,
    text_encoder_to_transformers,
    transformers_clip_text_config,
)
from latentdiff.config import (
    AutoencoderConfig,
    DiffusionConfig,
    ModelConfig,
    TextEncoderConfig,
)
from latentdiff.diffusion.schedules import (
    DIFFUSERS_BETA_SCHEDULES,
    SchedulerSettings,
    diffusion_config_from_diffusers,
)
from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_folder, write_json
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.training.checkpoint import (
    check_state,
    load_weights,
    read_pickled_state,
    save_weights,
)

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
UNET, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER = "unet vae text_encoder tokenizer scheduler".split()
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"  # legacy pickles: pytorch_model.bin
DIFFUSERS_VERSION = "0.42.1"
"""The diffusers version whose `from_pretrained` the written configs were checked against."""
CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407
"""OpenAI CLIP's <|startoftext|> / <|endoftext|> ids, for a folder written without a tokenizer."""


@dataclass
class DiffusersModel:
    """A diffusers folder in memory, ready for `components_from_weights`."""

    config: ModelConfig
    states: dict[str, dict[str, Tensor]]
    """"autoencoder", "unet", "text_encoder" → weights in latentdiff's key layout, file dtypes."""
    scheduler: SchedulerSettings
    """From `scheduler/scheduler_config.json`, so samplers space timesteps as diffusers does."""
    tokenizer_dir: Path
    """The folder's `tokenizer/` (a CLIP BPE tokenizer)."""
    dtype: torch.dtype
    """The floating dtype holding most of the parameters (for `latentdiff info`)."""


# ── Reading ───────────────────────────────────────────────────────────────────────────────


def read_diffusers_folder(
    folder: str | os.PathLike, *, variant: str | None = None
) -> DiffusersModel:
    """Read a Stable Diffusion diffusers folder (weights `*.{variant}.*` if a variant is given).

    Every config is read and checked before any weights are, and nothing is returned unless
    every key and shape fits: a bad folder is one UsageError naming the file and the problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"no diffusers folder at {folder}")
    if (folder / MODEL_INDEX).exists():  # not needed to read the model, but must be sound
        read_json(folder / MODEL_INDEX)
    tokenizer_dir = _tokenizer_dir(folder / TOKENIZER)
    config, scheduler = _read_configs(folder, special_token_ids(tokenizer_dir))
    states = {
        "unet": _read_component(
            folder / UNET, DIFFUSERS_WEIGHTS, variant, lambda s: unet_from_diffusers(s, config.unet)
        ),
        "autoencoder": read_autoencoder_weights(folder / VAE, config.autoencoder, variant),
        "text_encoder": _read_component(
            folder / TEXT_ENCODER,
            TRANSFORMERS_WEIGHTS,
            variant,
            lambda s: _checked_text_state(text_encoder_from_transformers(s), config.text_encoder),
        ),
    }
    return DiffusersModel(config, states, scheduler, tokenizer_dir, _main_dtype(states))


def _read_configs(
    folder: Path, special_ids: Mapping[str, int]
) -> tuple[ModelConfig, SchedulerSettings]:
    files = {name: folder / name / CONFIG for name in (UNET, TEXT_ENCODER)} | {
        SCHEDULER: folder / SCHEDULER / SCHEDULER_CONFIG
    }
    data = {name: read_json(path) for name, path in files.items()}
    autoencoder = read_autoencoder_config(folder / VAE)
    with config_errors_in(files[UNET]):
        unet = unet_config_from_diffusers(data[UNET])
        latent_size = optional_int(data[UNET], "sample_size")
    with config_errors_in(files[TEXT_ENCODER]):
        text_encoder = text_encoder_config_from_transformers(
            data[TEXT_ENCODER], pad_token_id=special_ids.get("pad_token")
        )
    with config_errors_in(files[SCHEDULER]):
        diffusion = diffusion_config_from_diffusers(data[SCHEDULER])
        scheduler = SchedulerSettings.from_diffusers_config(data[SCHEDULER])
    # A folder without the U-Net's sample_size gets our default image size.
    sample_size = (
        ModelConfig.sample_size
        if latent_size is None
        else latent_size * autoencoder.downsample_factor
    )
    try:
        return ModelConfig(autoencoder, unet, text_encoder, diffusion, sample_size), scheduler
    except ValueError as error:
        raise UsageError(
            f"{folder}: the components' configs do not fit together: {error}"
        ) from None


def read_autoencoder_config(folder: Path) -> AutoencoderConfig:
    """An `AutoencoderKL` folder's config.json (a diffusers SD folder's `vae/`, `sd-vae-ft-mse`)."""
    data = read_json(folder / CONFIG)
    with config_errors_in(folder / CONFIG):
        return autoencoder_config_from_diffusers(data)


def read_autoencoder_weights(
    folder: Path, config: AutoencoderConfig, variant: str | None = None
) -> dict[str, Tensor]:
    """An `AutoencoderKL` folder's weights (safetensors, sharded or legacy `.bin`, `*.{variant}.*`
    if a variant is given) in latentdiff's key layout."""
    return _read_component(
        folder, DIFFUSERS_WEIGHTS, variant, lambda s: autoencoder_from_diffusers(s, config)
    )


def holds_variant(directory: Path, variant: str) -> bool:
    """Whether a diffusers model folder holds weights of this variant (`*.fp16.safetensors`, …)."""
    try:
        _weights_path(directory, DIFFUSERS_WEIGHTS, variant)
    except UsageError:
        return False
    return True


def special_token_ids(tokenizer_dir: str | os.PathLike) -> dict[str, int]:
    """{"bos_token": id, "eos_token": id, "pad_token": id} of a transformers tokenizer folder.

    Reads the token strings from special_tokens_map.json, else tokenizer_config.json (a value
    may be a string or an AddedToken object), and their ids from vocab.json or tokenizer.json.
    A token that is not named, or not in the vocabulary, is left out.
    """
    tokenizer_dir = Path(tokenizer_dir)
    names: dict[str, Any] = {}
    for file in ("tokenizer_config.json", "special_tokens_map.json"):  # the second one wins
        if (tokenizer_dir / file).is_file():
            names |= read_json(tokenizer_dir / file)
    vocab = _vocabulary(tokenizer_dir)
    ids = {}
    for role in ("bos_token", "eos_token", "pad_token"):
        token = names.get(role)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token in vocab:
            ids[role] = vocab[token]
    return ids


def _vocabulary(tokenizer_dir: Path) -> dict[str, int]:
    if (tokenizer_dir / "vocab.json").is_file():
        vocab = read_json(tokenizer_dir / "vocab.json")
    else:  # transformers 5 writes only tokenizer.json
        data = read_json(tokenizer_dir / "tokenizer.json")
        vocab = dict((data.get("model") or {}).get("vocab") or {})
        vocab |= {t["content"]: t["id"] for t in data.get("added_tokens") or [] if "content" in t}
    return {token: i for token, i in vocab.items() if isinstance(i, int)}


def _tokenizer_dir(path: Path) -> Path:
    bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not (bpe or (path / "tokenizer.json").is_file()):
        raise UsageError(
            f"no CLIP tokenizer at {path}: need vocab.json and merges.txt (or tokenizer.json)"
        )
    return path


def _checked_text_state(state: dict[str, Tensor], config: TextEncoderConfig) -> dict[str, Tensor]:
    """Every key of our TextEncoder present with its shape, nothing else."""
    with empty_modules():
        expected = {k: v.shape for k, v in TextEncoder(config).state_dict().items()}
    check_state(state, expected)
    return state


def _read_component(
    directory: Path,
    stem: str,
    variant: str | None,
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]],
) -> dict[str, Tensor]:
    path = _weights_path(directory, stem, variant)
    with config_errors_in(path):
        return convert(_read_index(path) if path.suffix == ".json" else _read_weights_file(path))


def _weights_path(directory: Path, stem: str, variant: str | None) -> Path:
    """The component's weights, preferring safetensors, as diffusers does; a sharded set is
    named by its index file."""
    infix = f".{variant}" if variant else ""
    pickle_stem = "pytorch_model" if stem == TRANSFORMERS_WEIGHTS else stem
    names = [
        f"{stem}{infix}.safetensors",
        f"{stem}.safetensors.index{infix}.json",
        f"{pickle_stem}{infix}.bin",
        f"{pickle_stem}.bin.index{infix}.json",
    ]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    kind = f"{variant} weights" if variant else "weights"
    raise UsageError(f"no {kind} in {directory} (looked for {', '.join(names)})")


def _read_index(index: Path) -> dict[str, Tensor]:
    """A sharded checkpoint: `{"weight_map": {key: shard file}}` → the shards' tensors."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UsageError("no weight_map in this shard index")
    state: dict[str, Tensor] = {}
    for name in sorted(set(weight_map.values())):
        if not isinstance(name, str) or Path(name).name != name:
            raise UsageError(f"shard {name!r} is not a file name beside the index")
        state |= _read_weights_file(index.parent / name)
    return state


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_weights(path)[0]
    return read_pickled_state(path)


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _main_dtype(states: Mapping[str, Mapping[str, Tensor]]) -> torch.dtype:
    counts: Counter[torch.dtype] = Counter()
    for state in states.values():
        for tensor in state.values():
            if tensor.is_floating_point():
                counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


# ── Writing ───────────────────────────────────────────────────────────────────────────────


def write_diffusers_folder(
    folder: str | os.PathLike,
    config: ModelConfig,
    states: Mapping[str, Mapping[str, Tensor]],
    *,
    scheduler: SchedulerSettings | None,
    tokenizer_dir: Path | None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a diffusers folder that `StableDiffusionPipeline.from_pretrained` loads.

    `states` are latentdiff-layout weights; floating tensors are cast to `dtype` if given.
    `scheduler` None writes SD's own scheduler settings. The tokenizer's files are copied; its
    special tokens give the text config's bos/eos ids (else CLIP's 49406/49407). Refuses to
    replace a non-empty folder; builds everything under a temporary name, then renames it.
    """
    folder = Path(folder)
    if tokenizer_dir is not None:
        tokenizer_dir = _tokenizer_dir(Path(tokenizer_dir))
    # Every conversion runs before anything is written: a mismatch leaves no trace on disk.
    text_config, text_state = drop_unused_text_layer(
        config.text_encoder,
        _checked_text_state(dict(_component(states, "text_encoder")), config.text_encoder),
    )
    weights = {
        UNET: (DIFFUSERS_WEIGHTS, unet_to_diffusers(_component(states, "unet"), config.unet)),
        VAE: (
            DIFFUSERS_WEIGHTS,
            autoencoder_to_diffusers(_component(states, "autoencoder"), config.autoencoder),
        ),
        TEXT_ENCODER: (TRANSFORMERS_WEIGHTS, text_encoder_to_transformers(text_state)),
    }
    special = special_token_ids(tokenizer_dir) if tokenizer_dir is not None else {}
    configs = {
        MODEL_INDEX: _model_index(config, with_tokenizer=tokenizer_dir is not None),
        f"{UNET}/{CONFIG}": _unet_json(config),
        f"{VAE}/{CONFIG}": _vae_json(config),
        f"{TEXT_ENCODER}/{CONFIG}": _text_encoder_json(text_config, special),
        f"{SCHEDULER}/{SCHEDULER_CONFIG}": diffusers_scheduler_config(
            config.diffusion, scheduler or SchedulerSettings()
        ),
    }

    def write(tmp: Path) -> None:
        for name in (UNET, VAE, TEXT_ENCODER, SCHEDULER):
            (tmp / name).mkdir()
        for name, data in configs.items():
            write_json(tmp / name, data)
        for name, (stem, state) in weights.items():
            save_weights(tmp / name / f"{stem}.safetensors", state, {"format": "pt"}, dtype)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER)

    atomic_folder(folder, write)


def drop_unused_text_layer(
    config: TextEncoderConfig, state: Mapping[str, Tensor]
) -> tuple[TextEncoderConfig, dict[str, Tensor]]:
    """A penultimate-layer text encoder as diffusers stores it: its last block dropped, output
    "last". The U-Net's context, final_layer_norm(h after block L−1), is the same either way."""
    if config.output_layer == "last":
        return config, dict(state)
    if config.layers < 2:
        raise UsageError("a penultimate-layer text encoder needs at least 2 layers")
    last = f"blocks.{config.layers - 1}."
    kept = {key: tensor for key, tensor in state.items() if not key.startswith(last)}
    return replace(config, layers=config.layers - 1, output_layer="last"), kept


_BETA_SCHEDULE_NAMES = {ours: theirs for theirs, ours in DIFFUSERS_BETA_SCHEDULES.items()}


def diffusers_scheduler_config(
    diffusion: DiffusionConfig, settings: SchedulerSettings
) -> dict[str, Any]:
    """scheduler_config.json for SD's PNDMScheduler, every key that any SD sampler reads explicit.

    Each key is spelled out because diffusers fills a missing key with the default of whichever
    scheduler class reads the file, and those defaults differ (REFERENCE-NOTES). The one
    exception is `timestep_spacing` when `settings.spacing` is None: that means "each class's
    default" (SD's own configs have no such key), which only an absent key preserves.
    """
    data: dict[str, Any] = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion.num_train_timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": _BETA_SCHEDULE_NAMES[diffusion.beta_schedule],
        "trained_betas": None,
        "prediction_type": diffusion.prediction_type,
        "timestep_spacing": settings.spacing,
        "steps_offset": settings.steps_offset,
        "set_alpha_to_one": settings.set_alpha_to_one,
        "use_karras_sigmas": settings.karras,
        "skip_prk_steps": True,
        "clip_sample": False,
        "thresholding": False,
        "rescale_betas_zero_snr": diffusion.rescale_betas_zero_snr,
    }
    if settings.spacing is None:
        del data["timestep_spacing"]
    return data


def _component(states: Mapping[str, Mapping[str, Tensor]], name: str) -> Mapping[str, Tensor]:
    if name not in states:
        raise UsageError(f"no {name} weights to write")
    return states[name]


def _model_index(config: ModelConfig, *, with_tokenizer: bool) -> dict[str, Any]:
    pipeline = (
        "StableDiffusionInpaintPipeline" if config.is_inpainting else "StableDiffusionPipeline"
    )
    index: dict[str, Any] = {
        "_class_name": pipeline,
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if with_tokenizer:
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    return index


def _unet_json(config: ModelConfig) -> dict[str, Any]:
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        **diffusers_unet_config(config.unet),
        "sample_size": config.sample_size // config.autoencoder.downsample_factor,
    }


def _vae_json(config: ModelConfig) -> dict[str, Any]:
    autoencoder = config.autoencoder
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        **diffusers_vae_config(autoencoder),
        "latents_mean": list(autoencoder.latents_mean) if autoencoder.latents_mean else None,
        "latents_std": list(autoencoder.latents_std) if autoencoder.latents_std else None,
        "sample_size": config.sample_size,
    }


def _text_encoder_json(config: TextEncoderConfig, special: Mapping[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **transformers_clip_text_config(
            config,
            bos_token_id=special.get("bos_token", CLIP_BOS_ID),
            eos_token_id=special.get("eos_token", CLIP_EOS_ID),
        ),
        "projection_dim": config.width,  # used only by CLIPTextModelWithProjection
    }
