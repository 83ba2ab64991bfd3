"""diffusers' and transformers' `config.json` files → latentdiff's config dataclasses.

The inverse of `diffusers_layout.diffusers_unet_config` / `diffusers_vae_config` and
`transformers_layout.transformers_clip_text_config`. A config key whose value would change the
computation in a way our modules cannot reproduce is refused, naming the key and its value;
keys that do not change an fp32 forward pass are ignored. Every error is one `UsageError` line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from latentdiff.checkpoints.transformers_layout import LAYER_NORM_EPS
from latentdiff.config import AutoencoderConfig, TextEncoderConfig, UNetConfig
from latentdiff.errors import UsageError
from latentdiff.models.text_encoder import MLP_RATIO

# diffusers config values that select exactly what our modules compute; any other value of one
# of these keys selects something they cannot represent. A missing key takes diffusers' default,
# which is always the first value listed.
_UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "center_input_sample": (False,),
    "freq_shift": (0,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "mid_block_scale_factor": (1,),
    "downsample_padding": (1,),
    "norm_eps": (1e-5,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "projection_class_embeddings_input_dim": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "attention_type": ("default",),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "cross_attention_norm": (None,),
    "dual_cross_attention": (False,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "reverse_transformer_layers_per_block": (None,),
    "num_attention_heads": (None,),  # diffusers itself refuses it (its issue #2011)
}
# Keys that do not change an fp32 forward pass: bookkeeping, training-only dropout, the head
# count of an addition embedding that is off, and `upcast_attention` (SD 2.1 sets it), which
# computes attention scores in fp32 when the model runs in half precision.
_UNET_IGNORED = set(
    "_class_name _diffusers_version _name_or_path sample_size dropout "
    "upcast_attention addition_embed_type_num_heads".split()
)
_UNET_READ = set(
    "in_channels out_channels down_block_types up_block_types block_out_channels "
    "layers_per_block transformer_layers_per_block attention_head_dim "
    "cross_attention_dim use_linear_projection norm_num_groups flip_sin_to_cos "
    "time_embedding_dim".split()
)
_DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_BLOCKS = {True: "CrossAttnUpBlock2D", False: "UpBlock2D"}


def unet_config_from_diffusers(data: Mapping[str, Any]) -> UNetConfig:
    """A `UNet2DConditionModel` config.json → UNetConfig (the inverse of `diffusers_unet_config`).

    Missing keys take diffusers' defaults, as `from_pretrained` does.
    """
    _check_class(data, "UNet2DConditionModel")
    _check_fixed(data, _UNET_FIXED, _UNET_IGNORED | _UNET_READ)
    channels = _ints(data, "block_out_channels", (320, 640, 1280, 1280))
    down = _strings(data, "down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    if len(down) != len(channels) or any(block not in _DOWN_BLOCKS for block in down):
        raise UsageError(
            f"down_block_types = {list(down)}: need one of {sorted(_DOWN_BLOCKS)} per level "
            f"({len(channels)} levels)"
        )
    attention = tuple(_DOWN_BLOCKS[block] for block in down)
    up = _strings(data, "up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if list(up) != [_UP_BLOCKS[a] for a in reversed(attention)]:
        raise UsageError(f"up_block_types = {list(up)} do not mirror down_block_types")
    # diffusers' `attention_head_dim` is the number of heads (a historical misnomer).
    num_heads, head_dim = _heads(data.get("attention_head_dim", 8), channels)
    time_dim = optional_int(data, "time_embedding_dim")
    if time_dim is not None and time_dim % channels[0] != 0:
        raise UsageError(f"time_embedding_dim = {time_dim} is not a multiple of {channels[0]}")
    return _build(
        UNetConfig,
        in_channels=_int(data, "in_channels", 4),
        out_channels=_int(data, "out_channels", 4),
        block_channels=channels,
        layers_per_block=_uniform_int(data, "layers_per_block", 2),
        attention_levels=attention,
        num_heads=num_heads,
        head_dim=head_dim,
        transformer_depth=_uniform_int(data, "transformer_layers_per_block", 1),
        context_dim=_uniform_int(data, "cross_attention_dim", 1280),
        use_linear_projection=_bool(data, "use_linear_projection", False),
        norm_groups=_int(data, "norm_num_groups", 32),
        time_embed_mult=4 if time_dim is None else time_dim // channels[0],
        flip_sin_to_cos=_bool(data, "flip_sin_to_cos", True),
    )


def _heads(heads: Any, channels: tuple[int, ...]) -> tuple[int | None, int | None]:
    """diffusers' heads (one count, or one per level) → (num_heads, head_dim) of UNetConfig."""
    if isinstance(heads, int) and not isinstance(heads, bool):
        return heads, None
    if (
        isinstance(heads, list)
        and len(heads) == len(channels)
        and all(isinstance(h, int) and h > 0 for h in heads)
    ):
        if len(set(heads)) == 1:
            return heads[0], None
        widths = {c / h for c, h in zip(channels, heads, strict=True)}
        if len(widths) == 1 and float(next(iter(widths))).is_integer():
            return None, int(next(iter(widths)))  # SD 2.x: [5, 10, 20, 20] heads of 64 channels
    raise UsageError(
        f"attention_head_dim = {heads!r}: need one head count, or per-level head counts "
        f"giving the same head width at every level (block_out_channels {list(channels)})"
    )


_VAE_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu",),
    "shift_factor": (None,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "mid_block_add_attention": (True,),
}
# `force_upcast` only says to decode in fp32 when the pipeline runs in fp16.
_VAE_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "sample_size", "force_upcast"}
_VAE_READ = set(
    "in_channels out_channels down_block_types up_block_types block_out_channels "
    "layers_per_block latent_channels norm_num_groups scaling_factor latents_mean "
    "latents_std".split()
)


def autoencoder_config_from_diffusers(data: Mapping[str, Any]) -> AutoencoderConfig:
    """An `AutoencoderKL` config.json → AutoencoderConfig (the inverse of `diffusers_vae_config`)."""
    _check_class(data, "AutoencoderKL")
    _check_fixed(data, _VAE_FIXED, _VAE_IGNORED | _VAE_READ)
    channels = _ints(data, "block_out_channels", (64,))
    for key, block in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        blocks = _strings(data, key, (block,))
        if list(blocks) != [block] * len(channels):
            raise UsageError(
                f"{key} = {list(blocks)}: need {block} at each of {len(channels)} levels"
            )
    in_channels = _int(data, "in_channels", 3)
    if _int(data, "out_channels", 3) != in_channels:
        raise UsageError(
            f"out_channels = {data['out_channels']} differs from in_channels = {in_channels}"
        )
    return _build(
        AutoencoderConfig,
        in_channels=in_channels,
        latent_channels=_int(data, "latent_channels", 4),
        block_channels=channels,
        layers_per_block=_int(data, "layers_per_block", 1),
        norm_groups=_int(data, "norm_num_groups", 32),
        scaling_factor=_float(data, "scaling_factor", 0.18215),
        latents_mean=_optional_floats(data, "latents_mean"),
        latents_std=_optional_floats(data, "latents_std"),
    )


def text_encoder_config_from_transformers(
    data: Mapping[str, Any], pad_token_id: int | None = None
) -> TextEncoderConfig:
    """A `CLIPTextConfig` config.json → TextEncoderConfig with output_layer "last".

    `pad_token_id` (the tokenizer's) wins over the config's, which transformers itself never
    uses for CLIP (SD 1.x folders say 1, a leftover default, while their tokenizer pads with
    49407). Only keys that shape the computation are read: transformers configs carry dozens
    of generic ones.
    """
    model_type = data.get("model_type", "clip_text_model")
    if model_type != "clip_text_model":
        raise UsageError(f"model_type = {model_type!r}: need a CLIP text model (clip_text_model)")
    width = _int(data, "hidden_size", 512)
    intermediate = _int(data, "intermediate_size", 2048)
    if intermediate != MLP_RATIO * width:
        raise UsageError(
            f"intermediate_size = {intermediate}: our text encoder needs {MLP_RATIO} × "
            f"hidden_size = {MLP_RATIO * width}"
        )
    activation = data.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        raise UsageError(f"hidden_act = {activation!r}: need quick_gelu or gelu")
    if _float(data, "layer_norm_eps", LAYER_NORM_EPS) != LAYER_NORM_EPS:
        raise UsageError(f"layer_norm_eps = {data['layer_norm_eps']}: need {LAYER_NORM_EPS}")
    return _build(
        TextEncoderConfig,
        vocab_size=_int(data, "vocab_size", 49408),
        context_length=_int(data, "max_position_embeddings", 77),
        width=width,
        layers=_int(data, "num_hidden_layers", 12),
        heads=_int(data, "num_attention_heads", 8),
        activation=activation,
        output_layer="last",
        pad_token_id=pad_token_id if pad_token_id is not None else _int(data, "pad_token_id", 1),
    )


# ── JSON helpers: one UsageError naming the key and its value ──────────────────────────────


@contextmanager
def config_errors_in(path: Path) -> Iterator[None]:
    """Prefix any UsageError raised inside with the file it concerns."""
    try:
        yield
    except UsageError as error:
        message = str(error)
        raise UsageError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _check_class(data: Mapping[str, Any], expected: str) -> None:
    name = data.get("_class_name", expected)
    if name != expected:
        raise UsageError(f"_class_name = {name!r}: need {expected}")


def _check_fixed(
    data: Mapping[str, Any], fixed: Mapping[str, tuple[Any, ...]], known: set[str]
) -> None:
    for key, allowed in fixed.items():
        value = _uniform(data.get(key, allowed[0]))
        if not any(_same(value, a) for a in allowed):
            raise UsageError(f"unsupported {key} = {value!r} (latentdiff supports {allowed[0]!r})")
    for key, value in data.items():
        # A key newer than this reader that is null/false selects nothing new (diffusers'
        # convention for optional features); anything else might change the computation.
        if key not in fixed and key not in known and value is not None and value is not False:
            raise UsageError(f"unsupported key {key} = {value!r}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _uniform(value: Any) -> Any:
    """A per-level list whose entries are all equal → that entry."""
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _int(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{key} = {value!r}: expected an integer")
    return value


def optional_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key, 0)


def _uniform_int(data: Mapping[str, Any], key: str, default: int) -> int:
    value = _uniform(data.get(key, default))
    return _int({key: value}, key, default)


def _float(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UsageError(f"{key} = {value!r}: expected a number")
    return float(value)


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise UsageError(f"{key} = {value!r}: expected true or false")
    return value


def _ints(data: Mapping[str, Any], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = data.get(key, list(default))
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UsageError(f"{key} = {value!r}: expected a list of integers")
    return tuple(value)


def _strings(data: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{key} = {value!r}: expected a list of block names")
    return tuple(value)


def _optional_floats(data: Mapping[str, Any], key: str) -> tuple[float, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise UsageError(f"{key} = {value!r}: expected a list of numbers")
    return tuple(float(v) for v in value)


def _build(cls: type, **values: Any) -> Any:
    """A config dataclass, its own checks turned into a UsageError."""
    try:
        return cls(**values)
    except ValueError as error:
        raise UsageError(f"{cls.__name__}: {error}") from None
