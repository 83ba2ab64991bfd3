"""Configuration: one frozen dataclass per component, presets in a plain dict.

Every checkpoint stores its `ModelConfig` as JSON (`to_dict`/`from_dict`); an unknown key in
that JSON is an error, never silently ignored. Override a field with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from latentdiff.errors import UsageError


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class AutoencoderConfig:
    """KL autoencoder (LDM's "first stage"): image ↔ latent with downsampling factor f."""

    in_channels: int = 3
    """Image channels."""
    latent_channels: int = 4
    """Channels of the latent z (the posterior has twice as many: mean and log-variance)."""
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels per resolution level; f = 2 ** (len(block_channels) - 1)."""
    layers_per_block: int = 2
    """ResNet blocks per encoder level (the decoder uses one more, as in SD)."""
    norm_groups: int = 32
    """GroupNorm groups."""
    scaling_factor: float = 0.18215
    """Latents are multiplied by this before diffusion so that they have roughly unit variance."""
    kl_weight: float = 1e-6
    """Weight of the KL term in the autoencoder loss."""

    def __post_init__(self) -> None:
        _check(len(self.block_channels) >= 1, "block_channels must not be empty")
        _check(
            all(c % self.norm_groups == 0 for c in self.block_channels),
            f"every block channel count must be divisible by norm_groups={self.norm_groups}",
        )
        _check(self.scaling_factor > 0, "scaling_factor must be positive")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_channels) - 1)


@dataclass(frozen=True)
class UNetConfig:
    """The conditional U-Net of Stable Diffusion, every structural choice a field."""

    in_channels: int = 4
    """Latent channels in (9 for SD's inpainting variants: latent + mask + masked latent)."""
    out_channels: int = 4
    """Channels predicted (ε or v)."""
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    """Channels per resolution level (SD: model_channels 320 × channel_mult 1, 2, 4, 4)."""
    layers_per_block: int = 2
    """ResNet blocks per down level (up levels use one more, as in SD)."""
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    """Whether each level has spatial transformers (SD: all but the lowest resolution)."""
    num_heads: int | None = 8
    """Attention heads per transformer (SD 1.x); None means use `head_dim` instead."""
    head_dim: int | None = None
    """Channels per head (SD 2.x: 64); exactly one of num_heads / head_dim is set."""
    transformer_depth: int = 1
    """Transformer blocks per spatial transformer."""
    context_dim: int = 768
    """Width of the text-encoder context attended to by cross-attention."""
    use_linear_projection: bool = False
    """Linear (SD 2.x) instead of 1×1-conv (SD 1.x) projections into and out of transformers."""
    norm_groups: int = 32
    """GroupNorm groups."""
    time_embed_mult: int = 4
    """Timestep-embedding width = time_embed_mult × block_channels[0]."""
    flip_sin_to_cos: bool = True
    """Sinusoidal timestep embedding order [cos, sin] (SD) instead of [sin, cos]."""

    def __post_init__(self) -> None:
        _check(
            len(self.attention_levels) == len(self.block_channels),
            "attention_levels needs one entry per block_channels level",
        )
        _check(
            (self.num_heads is None) != (self.head_dim is None),
            "set exactly one of num_heads and head_dim",
        )
        for c in self.block_channels:
            _check(c % self.norm_groups == 0, f"channels {c} not divisible by norm_groups")
            heads = self.num_heads or c // self.head_dim  # type: ignore[operator]
            _check(c % heads == 0, f"channels {c} not divisible into {heads} heads")

    def heads_at(self, channels: int) -> int:
        """Attention heads for a transformer of this width."""
        return self.num_heads if self.num_heads is not None else channels // self.head_dim  # type: ignore[operator]


@dataclass(frozen=True)
class TextEncoderConfig:
    """A CLIP-style text transformer (causal mask, final LayerNorm, token + position embedding)."""

    vocab_size: int = 49408
    """Tokenizer vocabulary size."""
    context_length: int = 77
    """Tokens per prompt, padded or truncated (SD: 77)."""
    width: int = 768
    """Hidden width = the U-Net's context_dim."""
    layers: int = 12
    """Transformer layers."""
    heads: int = 12
    """Attention heads."""
    activation: Literal["quick_gelu", "gelu"] = "quick_gelu"
    """MLP activation (OpenAI CLIP: quick_gelu; OpenCLIP ViT-H: gelu)."""
    output_layer: Literal["last", "penultimate"] = "last"
    """Hidden state handed to the U-Net (SD 2.x takes the penultimate layer)."""
    pad_token_id: int = 0
    """Padding id (also used as the end-of-text id where the tokenizer has none of its own)."""

    def __post_init__(self) -> None:
        _check(self.width % self.heads == 0, "width must be divisible by heads")
        _check(self.context_length >= 2, "context_length must be at least 2")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: noise schedule over T training timesteps and what the U-Net predicts."""

    num_train_timesteps: int = 1000
    """T."""
    beta_schedule: Literal["linear", "scaled_linear", "cosine"] = "scaled_linear"
    """How β_t grows (SD: scaled_linear, i.e. linear in √β)."""
    beta_start: float = 0.00085
    """β_1."""
    beta_end: float = 0.012
    """β_T."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """ε-prediction (SD 1.x, 2.x-base) or v-prediction (SD 2.x 768)."""

    def __post_init__(self) -> None:
        _check(self.num_train_timesteps >= 2, "num_train_timesteps must be at least 2")
        _check(0 < self.beta_start < self.beta_end < 1, "need 0 < beta_start < beta_end < 1")


@dataclass(frozen=True)
class ModelConfig:
    """A whole latent diffusion model: what every checkpoint stores beside its weights."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample_size: int = 512
    """Default image side in pixels."""

    def __post_init__(self) -> None:
        _check(
            self.unet.context_dim == self.text_encoder.width,
            "unet.context_dim must equal text_encoder.width",
        )
        _check(
            self.sample_size % self.autoencoder.downsample_factor == 0,
            "sample_size must be a multiple of the autoencoder's downsampling factor",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from plain JSON data; unknown keys are an error."""
    if not isinstance(data, dict):
        raise UsageError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"{cls.__name__}: unknown config key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if default is not None and dataclasses.is_dataclass(default()):
            values[name] = from_dict(type(default()), value)
        elif isinstance(value, list):
            values[name] = tuple(value)
        else:
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{cls.__name__}: {error}") from None


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def load_model_config(path: str | Path) -> ModelConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read config {path}: {error}") from None
    return ModelConfig.from_dict(data)


# ── Presets ───────────────────────────────────────────────────────────────────────────────


def shapes_config() -> ModelConfig:
    """The bundled Shapes World model: 64×64 images, f=4 latents of 16×16×4."""
    return ModelConfig(
        autoencoder=AutoencoderConfig(
            block_channels=(32, 64, 128), layers_per_block=1, latent_channels=4, scaling_factor=1.0
        ),
        unet=UNetConfig(
            block_channels=(64, 128, 256),
            layers_per_block=1,
            attention_levels=(False, True, True),
            num_heads=None,
            head_dim=32,
            context_dim=128,
            use_linear_projection=True,
        ),
        text_encoder=TextEncoderConfig(
            vocab_size=64, context_length=24, width=128, layers=3, heads=4, activation="gelu"
        ),
        diffusion=DiffusionConfig(),
        sample_size=64,
    )


def tiny_config() -> ModelConfig:
    """A few-thousand-parameter model for fast tests."""
    return ModelConfig(
        autoencoder=AutoencoderConfig(block_channels=(8, 16), layers_per_block=1, norm_groups=4),
        unet=UNetConfig(
            block_channels=(16, 32),
            layers_per_block=1,
            attention_levels=(False, True),
            num_heads=2,
            context_dim=16,
            norm_groups=4,
        ),
        text_encoder=TextEncoderConfig(
            vocab_size=64, context_length=16, width=16, layers=1, heads=2
        ),
        sample_size=16,
    )


PRESETS = {
    "shapes": shapes_config,
    "tiny": tiny_config,
}
