"""Original single-file Stable Diffusion checkpoints (`v1-5-pruned-emaonly.safetensors`, `.ckpt`).

What users download from model sites: one file holding the whole `LatentDiffusion` module in
the CompVis key layout (compvis_layout.py), without a config. The architecture is therefore
read off the keys and shapes (`detect_config`): SD 1.x or 2.x from the text encoder's layout
(OpenAI CLIP vs OpenCLIP), inpainting from the U-Net's 9 input channels, every width and depth
from the tensors. What no shape tells — attention heads, the prediction type (SD 2's 512 px
ε "base" and 768 px v models have identical keys), the image size — comes from the presets,
and the caller can override it.

Reading never unpickles arbitrary objects: `.safetensors` is read with safetensors, pickles
(`.ckpt`, `.pt`, `.pth`) only with `torch.load(weights_only=True)`; a pickle that needs more is
refused. Only the tensors the model uses are loaded (memory-mapped for pickles), each once and
after every key and shape has been checked, so a full checkpoint with EMA copies costs no more
RAM than an EMA-only one and a bad file loads nothing. Files are written as safetensors only,
with latentdiff's config in the metadata, so that our own files read back exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from latentdiff.checkpoints.compvis_layout import (
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    TextLayout,
    canonical_clip_keys,
    canonical_key,
    compvis_shapes,
    model_from_compvis,
    model_to_compvis,
    written_config,
)
from latentdiff.checkpoints.transformers_layout import TEXT_MODEL_PREFIX
from latentdiff.config import (
    AutoencoderConfig,
    ModelConfig,
    TextEncoderConfig,
    UNetConfig,
    sd15_config,
    sd21_config,
)
from latentdiff.errors import UsageError
from latentdiff.training.checkpoint import read_pickled_state, save_weights

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
CONFIG_METADATA_KEY = "latentdiff_config"
"""Safetensors metadata entry holding the `ModelConfig` JSON of a file written by latentdiff."""
EMA_PREFIX = "model_ema."
VERSIONS = ("sd1", "sd2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TEXT_HEAD_WIDTH = 64
"""Channels per attention head of both SD text encoders (CLIP ViT-L/14, OpenCLIP ViT-H/14)."""

# Keys that original checkpoints carry but inference does not use: LDM's DDPM buffers (the
# schedule is the config's), the autoencoder's training loss (LPIPS, discriminator),
# CLIP's position-id buffer, OpenCLIP's contrastive head, the EMA bookkeeping.
IGNORED_KEYS = re.compile(
    r"(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod"
    r"|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod"
    r"|sqrt_recipm1_alphas_cumprod|posterior_\w+|lvlb_weights|logvar)"
    rf"|{re.escape(VAE_PREFIX)}loss\..*"
    rf"|{re.escape(CLIP_PREFIX)}({re.escape(TEXT_MODEL_PREFIX)})?embeddings\.position_ids"
    rf"|{re.escape(OPENCLIP_PREFIX)}(text_projection|logit_scale)"
    rf"|{re.escape(EMA_PREFIX)}(decay|num_updates)"
)

Shapes = Mapping[str, Sequence[int]]
Loader = Callable[[str], Tensor]


# ── Reading ───────────────────────────────────────────────────────────────────────────────


def read_single_file(
    path: str | os.PathLike,
    *,
    version: str | None = None,
    prediction_type: str | None = None,
    inpainting: bool | None = None,
    use_ema: bool = False,
) -> tuple[ModelConfig, dict[str, dict[str, Tensor]]]:
    """An original SD checkpoint → (its config, weights per component in latentdiff's layout).

    Tensors keep the file's dtype. The config is the one stored by latentdiff's writer, else
    detected (`detect_config`); `version` ("sd1"/"sd2") forces detection with that version's
    defaults, `prediction_type` ("epsilon"/"v_prediction") overrides the detected or stored
    one, `inpainting` must agree with the file. `use_ema` takes the U-Net's EMA copy
    (`model_ema.*`) of a full training checkpoint instead of its raw weights.
    """
    path = Path(path)
    _check_choice("version", version, VERSIONS)
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    with open_weights(path) as (shapes, metadata, load):
        try:
            _check_layout(shapes)
            config = _resolve_config(shapes, metadata, version, prediction_type, inpainting)
            sources = _select_keys(shapes, config, use_ema)
            states = model_from_compvis({key: load(src) for key, src in sources.items()}, config)
        except UsageError as error:
            raise UsageError(f"{path}: {error}") from None
    return config, states


def records_config(path: str | os.PathLike) -> bool:
    """Whether the file carries latentdiff's config (so nothing about it was guessed)."""
    with open_weights(Path(path)) as (_, metadata, _):
        return CONFIG_METADATA_KEY in metadata


def detect_config(
    shapes: Shapes,
    *,
    version: str | None = None,
    prediction_type: str | None = None,
    inpainting: bool | None = None,
) -> ModelConfig:
    """The architecture of an original SD checkpoint from its keys → shapes.

    Version: SD 2.x if the text encoder is OpenCLIP, else SD 1.x (its U-Net then gets 8
    heads, SD 2's 64-wide heads). Prediction type: ε, except v for SD 2 at 768 px when not
    inpainting (the `sd21` preset); ε for SD 2 means the 512 px `sd21-base`. Every width, depth
    and channel count comes from the shapes.
    """
    _check_choice("version", version, VERSIONS)
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _check_layout(shapes)
    shapes = canonical_clip_keys(shapes)  # type: ignore[arg-type]
    layout = _detect_text_layout(shapes)
    version = version or ("sd2" if layout == "openclip" else "sd1")
    base = sd15_config() if version == "sd1" else sd21_config()
    try:
        unet = _detect_unet(_strip(shapes, UNET_PREFIX), base, version)
        autoencoder = _detect_autoencoder(_strip(shapes, VAE_PREFIX), base)
        text_encoder = _detect_text_encoder(shapes, layout, base)
        config = ModelConfig(
            autoencoder=autoencoder, unet=unet, text_encoder=text_encoder, diffusion=base.diffusion
        )
        check_inpainting(config, inpainting)
        if prediction_type is None:
            prediction_type = (
                "v_prediction" if version == "sd2" and not config.is_inpainting else "epsilon"
            )
        return dataclasses.replace(
            config,
            diffusion=dataclasses.replace(base.diffusion, prediction_type=prediction_type),
            sample_size=768 if version == "sd2" and prediction_type == "v_prediction" else 512,
        )
    except ValueError as error:  # a config check: shapes that no supported model has
        raise UsageError(f"unsupported architecture: {error}") from None


def ema_key(key: str) -> str:
    """LDM's EMA copy of a U-Net weight: `model.diffusion_model.a.0.b` → `model_ema.diffusion_modela0b`
    (LitEma registers one buffer per parameter, its name with the dots removed)."""
    return EMA_PREFIX + key.removeprefix("model.").replace(".", "")


def _check_layout(shapes: Shapes) -> None:
    if not any(key.startswith(UNET_PREFIX) for key in shapes):
        raise UsageError(
            f"unknown layout: no {UNET_PREFIX}* keys, not an original Stable Diffusion checkpoint"
        )


def _resolve_config(
    shapes: Shapes,
    metadata: Mapping[str, str],
    version: str | None,
    prediction_type: str | None,
    inpainting: bool | None,
) -> ModelConfig:
    stored = _stored_config(metadata) if version is None else None
    if stored is None:
        return detect_config(
            shapes, version=version, prediction_type=prediction_type, inpainting=inpainting
        )
    check_inpainting(stored, inpainting)
    if prediction_type is not None:
        diffusion = dataclasses.replace(stored.diffusion, prediction_type=prediction_type)
        stored = dataclasses.replace(stored, diffusion=diffusion)
    return stored


def _stored_config(metadata: Mapping[str, str]) -> ModelConfig | None:
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        data = json.loads(metadata[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as error:
        raise UsageError(f"metadata {CONFIG_METADATA_KEY} is not JSON: {error}") from None
    return ModelConfig.from_dict(data)


def _select_keys(shapes: Shapes, config: ModelConfig, use_ema: bool) -> dict[str, str]:
    """CompVis key the model needs → the file's key holding it; every other key of the file
    must be one that inference ignores. Checks all keys and shapes before anything is loaded."""
    expected = compvis_shapes(config)
    sources: dict[str, str] = {}
    unexpected = []
    for key in shapes:
        canonical = canonical_key(key)
        if canonical in expected and canonical not in sources:
            sources[canonical] = key
        elif not (key.startswith(EMA_PREFIX) or IGNORED_KEYS.fullmatch(key)):
            unexpected.append(key)
    if unexpected:
        raise UsageError(f"unexpected key {sorted(unexpected)[0]} ({len(unexpected)} unexpected)")
    if use_ema:
        if not any(key.startswith(EMA_PREFIX + "diffusion_model") for key in shapes):
            raise UsageError(f"use_ema: the file holds no EMA weights ({EMA_PREFIX}*)")
        for key in expected:
            if key.startswith(UNET_PREFIX):
                sources[key] = ema_key(key)
    missing = sorted(key for key in expected if sources.get(key, "") not in shapes)
    if missing:
        name = ema_key(missing[0]) if use_ema and missing[0].startswith(UNET_PREFIX) else missing[0]
        raise UsageError(f"missing key {name} ({len(missing)} missing)")
    for canonical, key in sources.items():
        if tuple(shapes[key]) != tuple(expected[canonical]):
            raise UsageError(
                f"key {key} has shape {tuple(shapes[key])}, expected {tuple(expected[canonical])}"
            )
    return sources


def check_inpainting(config: ModelConfig, inpainting: bool | None, where: str = "") -> None:
    """Refuse a load whose `inpainting` option (None: either) disagrees with the model."""
    if inpainting is None or inpainting == config.is_inpainting:
        return
    kind = "an inpainting" if config.is_inpainting else "not an inpainting"
    prefix = f"{where}: " if where else ""
    raise UsageError(
        f"{prefix}the U-Net takes {config.unet.in_channels} input channels: {kind} model"
    )


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# ── Detection ─────────────────────────────────────────────────────────────────────────────


def _detect_text_layout(shapes: Shapes) -> TextLayout:
    if any(key.startswith(OPENCLIP_PREFIX) for key in shapes):
        return "openclip"
    if any(key.startswith(CLIP_PREFIX) for key in shapes):
        return "clip"
    raise UsageError(f"no text encoder: neither {CLIP_PREFIX}* nor {OPENCLIP_PREFIX}* keys")


def _detect_unet(shapes: Shapes, base: ModelConfig, version: str) -> UNetConfig:
    """UNetConfig from `input_blocks` (ResBlocks and Downsamples in running order); heads,
    GroupNorm groups and the timestep embedding's flavour are the version's."""
    model_channels, in_channels = _shape(shapes, "input_blocks.0.0.weight", UNET_PREFIX)[:2]
    indices = sorted(
        {int(m[1]) for key in shapes if (m := re.match(r"input_blocks\.(\d+)\.", key))}
    )
    widths: list[list[int]] = [[]]
    attention = [False]
    for index in indices[1:]:
        block = f"input_blocks.{index}."
        if block + "0.op.weight" in shapes:  # a Downsample closes the level
            widths.append([])
            attention.append(False)
        else:
            widths[-1].append(_shape(shapes, block + "0.out_layers.3.weight", UNET_PREFIX)[0])
            attention[-1] = attention[-1] or block + "1.proj_in.weight" in shapes
    counts = [len(level) for level in widths]
    if len(set(counts)) != 1 or 0 in counts:
        raise UsageError(f"unsupported U-Net: ResBlocks per level {counts} are not all equal")
    block_channels = tuple(level[0] for level in widths)
    heads = base.unet.num_heads or base.unet.head_dim
    if any(width % heads for width in block_channels):  # type: ignore[operator]
        per_head = "heads" if base.unet.num_heads else "channels per head"
        raise UsageError(
            f"U-Net widths {block_channels} do not split into {version}'s {heads} {per_head}"
        )
    depth = 0
    while f"middle_block.1.transformer_blocks.{depth}.norm1.weight" in shapes:
        depth += 1
    to_k = "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    proj_in = _shape(shapes, "middle_block.1.proj_in.weight", UNET_PREFIX)
    return dataclasses.replace(
        base.unet,
        in_channels=in_channels,
        out_channels=_shape(shapes, "out.2.weight", UNET_PREFIX)[0],
        block_channels=block_channels,
        layers_per_block=counts[0],
        attention_levels=tuple(attention),
        transformer_depth=depth,
        context_dim=_shape(shapes, to_k, UNET_PREFIX)[1],
        use_linear_projection=len(proj_in) == 2,  # SD 2.x: linear; SD 1.x: 1×1 convolution
        time_embed_mult=_shape(shapes, "time_embed.0.weight", UNET_PREFIX)[0] // model_channels,
    )


def _detect_autoencoder(shapes: Shapes, base: ModelConfig) -> AutoencoderConfig:
    """AutoencoderConfig from the encoder's levels; GroupNorm groups and the latent scaling
    factor are SD's."""
    widths = []
    while f"encoder.down.{len(widths)}.block.0.conv1.weight" in shapes:
        widths.append(shapes[f"encoder.down.{len(widths)}.block.0.conv1.weight"][0])
    per_level = 0
    while f"encoder.down.0.block.{per_level}.conv1.weight" in shapes:
        per_level += 1
    if not widths:
        raise UsageError(f"missing key {VAE_PREFIX}encoder.down.0.block.0.conv1.weight")
    return dataclasses.replace(
        base.autoencoder,
        in_channels=_shape(shapes, "encoder.conv_in.weight", VAE_PREFIX)[1],
        latent_channels=_shape(shapes, "post_quant_conv.weight", VAE_PREFIX)[0],
        block_channels=tuple(widths),
        layers_per_block=per_level,
    )


def _detect_text_encoder(
    shapes: Shapes, layout: TextLayout, base: ModelConfig
) -> TextEncoderConfig:
    """TextEncoderConfig: sizes from the shapes, activation and output layer from the layout
    (CLIP: quick_gelu, last layer; OpenCLIP: GELU, penultimate layer)."""
    if layout == "clip":
        prefix = CLIP_PREFIX + TEXT_MODEL_PREFIX
        tokens, positions = (
            "embeddings.token_embedding.weight",
            "embeddings.position_embedding.weight",
        )
        layer = "encoder.layers.{}.layer_norm1.weight"
    else:
        prefix = OPENCLIP_PREFIX
        tokens, positions = "token_embedding.weight", "positional_embedding"
        layer = "transformer.resblocks.{}.ln_1.weight"
    vocab_size, width = _shape(shapes, prefix + tokens, "")
    layers = 0
    while prefix + layer.format(layers) in shapes:
        layers += 1
    if width % TEXT_HEAD_WIDTH:
        raise UsageError(
            f"text encoder width {width} does not split into {TEXT_HEAD_WIDTH}-wide heads"
        )
    return dataclasses.replace(
        base.text_encoder,
        vocab_size=vocab_size,
        context_length=_shape(shapes, prefix + positions, "")[0],
        width=width,
        layers=layers,
        heads=width // TEXT_HEAD_WIDTH,
        activation="quick_gelu" if layout == "clip" else "gelu",
        output_layer="last" if layout == "clip" else "penultimate",
    )


def _shape(shapes: Shapes, key: str, prefix: str) -> Sequence[int]:
    if key not in shapes:
        raise UsageError(f"missing key {prefix}{key}")
    return shapes[key]


def _strip(shapes: Shapes, prefix: str) -> dict[str, Sequence[int]]:
    return {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}


# ── Files ─────────────────────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def open_weights(path: Path) -> Iterator[tuple[dict[str, torch.Size], dict[str, str], Loader]]:
    """(key → shape, metadata, load(key)) of a weights file; a bad file is a UsageError."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(str(path), framework="pt") as file:
                shapes = {key: torch.Size(file.get_slice(key).get_shape()) for key in file.keys()}
                yield shapes, dict(file.metadata() or {}), file.get_tensor
        except (SafetensorError, OSError) as error:
            raise UsageError(f"{path}: cannot read safetensors file: {error}") from None
    elif suffix in PICKLE_SUFFIXES:
        state = read_pickled_state(path)
        yield {key: tensor.shape for key, tensor in state.items()}, {}, state.__getitem__
    else:
        known = ", ".join((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))
        raise UsageError(f"{path}: unknown checkpoint type {suffix!r} (expected {known})")


# ── Writing ───────────────────────────────────────────────────────────────────────────────


def write_single_file(
    path: str | os.PathLike,
    config: ModelConfig,
    states: Mapping[str, Mapping[str, Tensor]],
    dtype: torch.dtype | None = None,
) -> None:
    """Write an original-layout SD checkpoint (`.safetensors` only), atomically.

    Floating tensors are cast to `dtype` if given. The metadata carries the written config
    (`written_config(config)`), which `read_single_file` prefers to detection.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise UsageError(
            f"{path}: single files are written as {SAFETENSORS_SUFFIX} only "
            "(a pickle can run code when it is loaded)"
        )
    tensors = model_to_compvis(states, config)
    metadata = {
        "format": "pt",
        CONFIG_METADATA_KEY: json.dumps(written_config(config).to_dict()),
    }
    save_weights(path, tensors, metadata=metadata, dtype=dtype)
