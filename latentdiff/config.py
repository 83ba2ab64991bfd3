"""Configuration: one frozen dataclass per component, presets in a plain dict.

Every checkpoint stores its `ModelConfig` as JSON (`to_dict`/`from_dict`); an unknown key in
that JSON is an error, never silently ignored. Override a field with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
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
    latents_mean: tuple[float, ...] | None = None
    """Per-channel mean subtracted before scaling (diffusers' `latents_mean`); None: no shift."""
    latents_std: tuple[float, ...] | None = None
    """Per-channel std divided out before scaling (diffusers' `latents_std`); None: 1. A weakly
    KL-regularised latent can have channels of very different spread; diffusion adds the same
    noise to each, so an unnormalised small channel is drowned early and decoded from errors."""
    kl_weight: float = 1e-6
    """Weight of the KL term in the autoencoder loss."""

    def __post_init__(self) -> None:
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            _check(
                value is None or len(value) == self.latent_channels,
                f"{name} needs one value per latent channel ({self.latent_channels})",
            )
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
    num_class_embeds: int | None = None
    """Classes of a learned embedding added to the timestep embedding (SD's x4 upscaler: the
    noise level, 0–999, of its low-resolution input image)."""
    only_cross_attention: tuple[bool, ...] | None = None
    """Per level: the transformers' first attention attends to the text, not to the pixels
    (SD's x4 upscaler: all levels but the lowest); None means never."""
    token_layout_size: int | None = None
    """A learnt spatial prior per text token on the cross-attention logits, stored at this
    latent side (the training one; `models/token_layout.py`). The context then carries the
    token input embeddings beside the states. None (every SD preset): no such bias."""

    def __post_init__(self) -> None:
        _check(
            len(self.attention_levels) == len(self.block_channels),
            "attention_levels needs one entry per block_channels level",
        )
        _check(
            (self.num_heads is None) != (self.head_dim is None),
            "set exactly one of num_heads and head_dim",
        )
        _check(
            self.only_cross_attention is None
            or len(self.only_cross_attention) == len(self.block_channels),
            "only_cross_attention needs one entry per block_channels level",
        )
        _check(
            self.token_layout_size is None or self.token_layout_size >= 1,
            "token_layout_size must be a positive latent side",
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
    rescale_betas_zero_snr: bool = False
    """Rescale the betas so that ᾱ_T = 0 (Lin et al. 2024, Algorithm 1): the last training step
    is pure noise, so no trace of the image's mean survives into x_T for the model to read
    back. Needs v-prediction (ε says nothing about x0 at zero SNR) and "trailing" sampling."""

    def __post_init__(self) -> None:
        _check(self.num_train_timesteps >= 2, "num_train_timesteps must be at least 2")
        _check(0 < self.beta_start < self.beta_end < 1, "need 0 < beta_start < beta_end < 1")
        _check(
            not self.rescale_betas_zero_snr or self.prediction_type == "v_prediction",
            "rescale_betas_zero_snr needs prediction_type v_prediction",
        )


@dataclass(frozen=True)
class SamplingConfig:
    """How this model samples best when the caller does not say: the defaults of `generate`.

    Measured per trained model (as transformers' generation_config.json), so a user of the
    bundled model gets its best settings without knowing them; the project-wide defaults are
    the ones real SD checkpoints use, so their images stay diffusers'.
    """

    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0
    """φ of Lin et al.'s guidance rescaling (0 = plain CFG)."""
    guidance_interval: tuple[float, float | None] | None = None
    """(σ_lo, σ_hi]: guide only at these noise levels; σ_hi None is no upper bound (strict JSON
    has no infinity); None guides at every step."""

    def __post_init__(self) -> None:
        _check(math.isfinite(self.guidance_scale), "guidance_scale must be finite")
        _check(0 <= self.guidance_rescale <= 1, "guidance_rescale must be in [0, 1]")
        if self.guidance_interval is not None:
            low, high = self.guidance_interval
            high = math.inf if high is None else high
            _check(valid_interval(low, high), "guidance_interval needs 0 <= lo < hi, lo finite")
            # One spelling of an open top, the one strict JSON can write.
            open_top = (low, None if math.isinf(high) else high)
            object.__setattr__(self, "guidance_interval", open_top)

    def __str__(self) -> str:
        """E.g. "guidance 2, rescale 0, guided at σ in (0.6, inf]" (what `latentdiff info` shows)."""
        interval = self.interval
        where = "every step" if interval is None else f"σ in {format_interval(interval)}"
        return f"guidance {self.guidance_scale:g}, rescale {self.guidance_rescale:g}, guided at {where}"

    @property
    def interval(self) -> tuple[float, float] | None:
        """`guidance_interval` as a request takes it, with an open top as infinity."""
        if self.guidance_interval is None:
            return None
        low, high = self.guidance_interval
        return (low, math.inf if high is None else high)


def format_interval(interval: tuple[float, float]) -> str:
    """A guidance interval as text, "(0.6, inf]"."""
    return "({:g}, {:g}]".format(*interval)


def valid_interval(low: float, high: float) -> bool:
    """A guidance interval (low, high] is 0 ≤ low < high with a finite low; NaN fails."""
    return 0 <= low < high and math.isfinite(low)


@dataclass(frozen=True)
class ModelConfig:
    """A whole latent diffusion model: what every checkpoint stores beside its weights."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample_size: int = 512
    """Default image side in pixels."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        _check(
            self.unet.context_dim == self.text_encoder.width,
            "unet.context_dim must equal text_encoder.width",
        )
        _check(
            self.unet.in_channels
            in (
                self.autoencoder.latent_channels,
                2 * self.autoencoder.latent_channels + 1,  # inpainting: + mask + masked latent
                self.autoencoder.latent_channels + 3,  # x4 upscaler: + the low-res RGB image
            ),
            "unet.in_channels must equal the latent channels (or 2·latent + 1 for inpainting, "
            "latent + 3 for the upscaler)",
        )
        _check(
            self.sample_size % self.size_multiple == 0,
            f"sample_size must be a multiple of {self.size_multiple}",
        )

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the autoencoder's f times the U-Net's
        downsampling, so that every U-Net level halves the latent exactly."""
        return self.autoencoder.downsample_factor * 2 ** (len(self.unet.block_channels) - 1)

    @property
    def is_inpainting(self) -> bool:
        """SD's inpainting U-Nets take the noisy latents, a mask and the masked image's latents."""
        return self.unet.in_channels == 2 * self.autoencoder.latent_channels + 1

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
        default = (
            fields[name].default_factory
            if fields[name].default_factory is not dataclasses.MISSING
            else None
        )  # type: ignore[misc]
        if default is not None and dataclasses.is_dataclass(default()):
            values[name] = from_dict(type(default()), value)
        elif isinstance(value, list):
            values[name] = tuple(value)
        else:
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError, ArithmeticError) as error:  # e.g. int too large for a float
        raise UsageError(f"{cls.__name__}: {error}") from None


def load_model_config(path: str | Path) -> ModelConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read config {path}: {error}") from None
    return ModelConfig.from_dict(data)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """CLIP's image tower: a ViT sized for the 64×64 Shapes World (8×8 patches of 8 px)."""

    image_size: int = 64
    """Side of the square input; other sizes are resized to it by `clip_score`, else an error."""
    patch_size: int = 8
    """Side of a patch = stride of the patch-embedding convolution."""
    width: int = 128
    """Hidden width."""
    layers: int = 4
    """Transformer layers."""
    heads: int = 4
    """Attention heads."""
    activation: Literal["quick_gelu", "gelu"] = "gelu"
    """MLP activation."""

    def __post_init__(self) -> None:
        _check(
            self.image_size % self.patch_size == 0, "image_size must be a multiple of patch_size"
        )
        _check(self.width % self.heads == 0, "width must be divisible by heads")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def _shapes_text_config() -> TextEncoderConfig:
    return shapes_config().text_encoder


@dataclass(frozen=True)
class CLIPConfig:
    """Both towers and the shared embedding; the defaults are the Shapes World's CLIP."""

    text: TextEncoderConfig = field(default_factory=_shapes_text_config)
    """Text tower; the `shapes` preset's text encoder, so its weights can condition the U-Net."""
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    """Image tower."""
    embed_dim: int = 128
    """Width of the joint embedding space both towers project into."""

    def __post_init__(self) -> None:
        _check(self.embed_dim >= 1, "embed_dim must be positive")


def default_clip_config() -> CLIPConfig:
    """The Shapes World CLIP: text 128 wide × 3 layers, ViT 128 × 4 layers on 64×64, embed 128."""
    return CLIPConfig()


# ── Presets ───────────────────────────────────────────────────────────────────────────────


def shapes_config() -> ModelConfig:
    """The bundled Shapes World model: 64×64 images, f=4 latents of 16×16×4, v-prediction on the
    zero-terminal-SNR schedule (docs/MODEL.md); v2's architecture with a token layout bias."""
    base = shapes_v2_config()
    return replace(
        base,
        # A learnt spatial prior per token on the cross-attention logits: without it the model
        # does not learn "on the left" and the like (docs/MODEL.md).
        unet=replace(base.unet, token_layout_size=16),
        # Measured on the v6 weights (docs/MODEL.md): guidance 5 and 6 tie at the top over three
        # seed sets, 0.03 above 3 (where v4 and v5 peaked); 5 draws single objects better. Still
        # none in the last three of 20 steps (σ ≤ 0.6).
        sampling=SamplingConfig(guidance_scale=5.0, guidance_interval=(0.6, None)),
    )


def shapes_v2_config() -> ModelConfig:
    """The second shapes model's architecture, without the token layout bias, kept so that
    its cycles of scripts/train_shapes_v5.sh still run before the bias is added."""
    base = shapes_v1_config()
    return replace(
        base,
        # Twice the first model's width: its autoencoder's own round trips scored 0.714, a
        # ceiling under the adherence targets. 8 groups, not SD's 32: a group of one channel
        # would normalise a flat background to 0.
        autoencoder=replace(base.autoencoder, block_channels=(32, 64, 128)),
        # Zero terminal SNR keeps the background out of x_T (Lin et al. 2024); it needs v.
        diffusion=DiffusionConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True),
        # Measured best on the v2 weights (docs/MODEL.md): guidance 2, and none in the last
        # three of 20 steps (σ ≤ 0.6), where guiding bends squares' sides into circles.
        sampling=SamplingConfig(guidance_scale=2.0, guidance_interval=(0.6, None)),
    )


def shapes_v1_config() -> ModelConfig:
    """The first bundled shapes model's architecture, kept so that its recipe
    (scripts/train_shapes_v1.sh) still runs: its stage 1 is ε-prediction on SD's schedule."""
    return ModelConfig(
        # Sized for a 2-core CPU (AVX2, no bf16 units): 2.1 GFLOP per image for an AE step,
        # 2.0 GFLOP per sample for a U-Net step (forward + backward).
        autoencoder=AutoencoderConfig(
            block_channels=(16, 32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_groups=8,
            scaling_factor=1.0,
        ),
        unet=UNetConfig(
            block_channels=(64, 128, 128),
            layers_per_block=1,
            attention_levels=(False, True, True),
            num_heads=None,
            head_dim=32,
            context_dim=128,
            use_linear_projection=True,
        ),
        text_encoder=TextEncoderConfig(
            vocab_size=80, context_length=24, width=128, layers=3, heads=4, activation="gelu"
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


def sd15_config() -> ModelConfig:
    """Stable Diffusion 1.5: 860 M U-Net (8 heads, 1×1-conv projections), CLIP ViT-L/14 text."""
    return ModelConfig(
        autoencoder=AutoencoderConfig(),
        unet=UNetConfig(),
        text_encoder=TextEncoderConfig(pad_token_id=49407),
        diffusion=DiffusionConfig(),
        sample_size=512,
    )


def _sd2_model(
    prediction_type: Literal["epsilon", "v_prediction"], sample_size: int
) -> ModelConfig:
    """Stable Diffusion 2.x: 64-wide heads, linear projections, OpenCLIP ViT-H/14 text.

    The text model has 24 layers, of which SD 2 uses the first 23 (the penultimate hidden
    state, then the final LayerNorm); diffusers folders store only those 23.
    """
    return ModelConfig(
        autoencoder=AutoencoderConfig(),
        unet=UNetConfig(num_heads=None, head_dim=64, context_dim=1024, use_linear_projection=True),
        text_encoder=TextEncoderConfig(
            width=1024,
            layers=24,
            heads=16,
            activation="gelu",
            output_layer="penultimate",
            pad_token_id=0,
        ),
        diffusion=DiffusionConfig(prediction_type=prediction_type),
        sample_size=sample_size,
    )


def sd21_config() -> ModelConfig:
    """Stable Diffusion 2.1 (768×768, v-prediction)."""
    return _sd2_model("v_prediction", 768)


def sd21_base_config() -> ModelConfig:
    """Stable Diffusion 2.1-base (512×512, ε-prediction)."""
    return _sd2_model("epsilon", 512)


def sd_x4_upscaler_config() -> ModelConfig:
    """Stable Diffusion x4 upscaler: a 128² latent of an f=4 autoencoder beside the 128² RGB
    image it upscales to 512², v-prediction, OpenCLIP-H text, noise-level class embedding.
    Config and modules only: no upscaling pipeline yet."""
    sd2 = _sd2_model("v_prediction", 512)
    return ModelConfig(
        autoencoder=AutoencoderConfig(block_channels=(128, 256, 512), scaling_factor=0.08333),
        unet=UNetConfig(
            in_channels=7,
            block_channels=(256, 512, 512, 1024),
            attention_levels=(False, True, True, True),
            num_heads=8,
            context_dim=1024,
            use_linear_projection=True,
            num_class_embeds=1000,
            only_cross_attention=(True, True, True, False),
        ),
        text_encoder=sd2.text_encoder,
        diffusion=DiffusionConfig(beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction"),
        sample_size=512,
    )


def inpainting(config: ModelConfig) -> ModelConfig:
    """The inpainting variant of a model: the U-Net also sees the mask and the masked image's
    latent, 9 input channels = latent 4 + mask 1 + masked latent 4 (SD's inpainting models)."""
    unet = replace(config.unet, in_channels=2 * config.autoencoder.latent_channels + 1)
    return replace(config, unet=unet)


def sd15_inpainting_config() -> ModelConfig:
    """Stable Diffusion 1.5 inpainting (runwayml's 9-channel fine-tune of SD 1.2)."""
    return inpainting(sd15_config())


def sd2_inpainting_config() -> ModelConfig:
    """Stable Diffusion 2 inpainting (512×512, ε-prediction, fine-tuned from 2-base)."""
    return inpainting(sd21_base_config())


PRESETS = {
    "shapes": shapes_config,
    "shapes-v2": shapes_v2_config,
    "shapes-v1": shapes_v1_config,
    "tiny": tiny_config,
    "sd15": sd15_config,
    "sd15-inpainting": sd15_inpainting_config,
    "sd21": sd21_config,
    "sd21-base": sd21_base_config,
    "sd2-inpainting": sd2_inpainting_config,
    "sd-x4-upscaler": sd_x4_upscaler_config,
}


# ── Training ──────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class TrainConfig:
    """One training run of any component: optimisation, precision, checkpointing, logging.

    Stored in every training checkpoint (`trainer_state.json`). A "step" is one optimizer
    update on `batch_size` samples, split into `grad_accum_steps` micro-batches on each of the
    processes of a torchrun launch.
    """

    steps: int = 1000
    """Optimizer steps to train to (a resumed run continues up to this total)."""
    batch_size: int = 32
    """Global batch: samples per optimizer step over all processes and micro-batches."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate, reached at the end of the warm-up."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay; applied to weight matrices and kernels only, not to biases,
    norm scales or other 1-D parameters (decaying those only hurts)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β1, β2)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up from learning_rate / warmup_steps."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay towards 0 at `steps` (changing `steps` on
    resume changes the remaining cosine)."""
    cosine_from: int | None = None
    """With the cosine schedule: hold the peak rate up to this step, then decay over the steps
    left (warm-up, stable, decay: a constant-rate run resumed with it is annealed without a
    jump in the rate). None: the decay starts right after warm-up."""
    grad_accum_steps: int = 1
    """Micro-batches per step on each process; trades time for memory at the same result."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping."""
    ema_decay: float | None = None
    """Exponential-moving-average decay of the weights (e.g. 0.999); None disables EMA. The
    decay after n steps is min(ema_decay, (1 + n) / (10 + n)), so early averages forget the
    random initialisation quickly."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """"bf16" runs forward and loss under bfloat16 autocast (weights and optimizer stay fp32).
    Faster only where the hardware has bf16 matrix units (AVX512-BF16/AMX, recent GPUs)."""
    seed: int = 0
    """Seeds the per-step randomness (noise, timesteps, dropout) and the data order."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and always at the last step)."""
    log_every: int = 10
    """Log the mean loss over the last this-many steps (and at every checkpoint)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk; older ones are deleted."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps must be at least 1")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.learning_rate > 0, "learning_rate must be positive")
        _check(self.weight_decay >= 0, "weight_decay must not be negative")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas must be two numbers in [0, 1)",
        )
        _check(self.warmup_steps >= 0, "warmup_steps must not be negative")
        _check(self.lr_schedule in ("constant", "cosine"), "lr_schedule: constant or cosine")
        _check(
            self.cosine_from is None
            or (
                self.lr_schedule == "cosine" and self.warmup_steps <= self.cosine_from < self.steps
            ),
            "cosine_from needs the cosine schedule and a step from the end of warm-up to steps - 1",
        )
        _check(self.grad_accum_steps >= 1, "grad_accum_steps must be at least 1")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)")
        _check(self.mixed_precision in ("no", "bf16"), "mixed_precision: no or bf16")
        _check(self.seed >= 0, "seed must not be negative")
        _check(self.checkpoint_every >= 1, "checkpoint_every must be at least 1")
        _check(self.log_every >= 1, "log_every must be at least 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1")
