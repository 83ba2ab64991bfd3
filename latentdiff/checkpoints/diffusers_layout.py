"""State-dict keys of diffusers' `UNet2DConditionModel` / `AutoencoderKL` ↔ latentdiff's.

Pure functions over `{key: tensor}` dicts: tensors are renamed, never copied. The key pairs come
from latentdiff's own module tree (built on the "meta" device, so no memory is allocated) passed
through a short list of renaming rules, so a module added to the models cannot silently go
unmapped: the conversions reject unknown keys, missing keys and wrong shapes. Every module type
is the same on both sides (1×1 conv where diffusers has a conv, linear where it has a linear),
so no tensor needs reshaping.

`diffusers_unet_config` / `diffusers_vae_config` give the constructor arguments of the diffusers
model with the same architecture, as written in a diffusers folder's `config.json`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from latentdiff.checkpoints.bundle import empty_modules
from latentdiff.config import AutoencoderConfig, UNetConfig
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.unet import UNet
from latentdiff.training.checkpoint import check_state

# (pattern, replacement) applied in order to every latentdiff key.
UNET_RULES = (
    (r"^time_embed\.", "time_embedding."),
    (r"^class_embed\.", "class_embedding."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.resnet\.", r"\1_blocks.\2.resnets.\3."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.transformer\.", r"\1_blocks.\2.attentions.\3."),
    (r"^(down|up)\.(\d+)\.resample\.", r"\1_blocks.\2.\1samplers.0."),
    (r"^mid\.res1\.", "mid_block.resnets.0."),
    (r"^mid\.res2\.", "mid_block.resnets.1."),
    (r"^mid\.transformer\.", "mid_block.attentions.0."),
    (r"\.time_proj\.", ".time_emb_proj."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.blocks\.(\d+)\.", r".transformer_blocks.\1."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
)
VAE_RULES = (
    (r"^encoder\.down\.(\d+)\.resnets\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.resample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.resnets\.", r"decoder.up_blocks.\1.resnets."),
    (r"^decoder\.up\.(\d+)\.resample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"\.mid\.res1\.", ".mid_block.resnets.0."),
    (r"\.mid\.res2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn\.attention\.", ".mid_block.attentions.0."),
    (r"\.norm_out\.", ".conv_norm_out."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.to_out\.", ".to_out.0."),
)
# Older diffusers VAE files (e.g. SD 1.x folders saved before diffusers 0.14) name the
# mid-block attention's projections query/key/value/proj_attn; diffusers renames them on load.
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

KeyMap = tuple[tuple[str, str, torch.Size], ...]
"""(latentdiff key, diffusers key, shape) for every parameter."""


def unet_to_diffusers(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """latentdiff U-Net weights → `UNet2DConditionModel` weights."""
    return _rename(state_dict, _unet_keys(config), to_diffusers=True)


def unet_from_diffusers(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """`UNet2DConditionModel` weights → latentdiff U-Net weights."""
    return _rename(state_dict, _unet_keys(config), to_diffusers=False)


def autoencoder_to_diffusers(
    state_dict: Mapping[str, Tensor], config: AutoencoderConfig
) -> dict[str, Tensor]:
    """latentdiff autoencoder weights → `AutoencoderKL` weights."""
    return _rename(state_dict, _vae_keys(config), to_diffusers=True)


def autoencoder_from_diffusers(
    state_dict: Mapping[str, Tensor], config: AutoencoderConfig
) -> dict[str, Tensor]:
    """`AutoencoderKL` weights (current or legacy attention names) → latentdiff weights."""
    legacy = "|".join(LEGACY_VAE_ATTENTION)
    pattern = re.compile(rf"(\.mid_block\.attentions\.0\.)({legacy})\.")
    renamed = {
        pattern.sub(lambda m: m[1] + LEGACY_VAE_ATTENTION[m[2]] + ".", key): value
        for key, value in state_dict.items()
    }
    return _rename(renamed, _vae_keys(config), to_diffusers=False)


def diffusers_unet_config(config: UNetConfig) -> dict:
    """Keyword arguments of `UNet2DConditionModel` for the same architecture.

    diffusers' `attention_head_dim` is, for historical reasons, the number of heads: an int for
    SD 1.x (8), a per-level list for SD 2.x ([5, 10, 20, 20] = channels / 64).
    """
    if config.token_layout_size is not None:
        raise UsageError(
            "this U-Net has a token layout bias, which diffusers' UNet2DConditionModel lacks"
        )
    heads = [config.heads_at(c) for c in config.block_channels]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in config.attention_levels[::-1]]
    return {
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": list(config.block_channels),
        "layers_per_block": config.layers_per_block,
        "transformer_layers_per_block": config.transformer_depth,
        "attention_head_dim": config.num_heads if config.num_heads is not None else heads,
        "cross_attention_dim": config.context_dim,
        "use_linear_projection": config.use_linear_projection,
        "norm_num_groups": config.norm_groups,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "freq_shift": 0,
        "time_embedding_dim": config.time_embed_mult * config.block_channels[0],
        "downsample_padding": 1,
        "num_class_embeds": config.num_class_embeds,
        "only_cross_attention": list(config.only_cross_attention or [False] * len(heads)),
    }


def diffusers_vae_config(config: AutoencoderConfig) -> dict:
    """Keyword arguments of `AutoencoderKL` for the same architecture."""
    levels = len(config.block_channels)
    return {
        "in_channels": config.in_channels,
        "out_channels": config.in_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(config.block_channels),
        "layers_per_block": config.layers_per_block,
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_groups,
        "act_fn": "silu",
        "scaling_factor": config.scaling_factor,
    }


@functools.lru_cache(maxsize=8)
def _unet_keys(config: UNetConfig) -> KeyMap:
    return _key_map(UNet, config, UNET_RULES)


@functools.lru_cache(maxsize=8)
def _vae_keys(config: AutoencoderConfig) -> KeyMap:
    return _key_map(Autoencoder, config, VAE_RULES)


def _key_map(model_class: type[nn.Module], config: object, rules: tuple) -> KeyMap:
    with empty_modules():
        model = model_class(config)
    pairs = []
    for key, tensor in model.state_dict().items():
        theirs = key
        for pattern, replacement in rules:
            theirs = re.sub(pattern, replacement, theirs)
        pairs.append((key, theirs, tensor.shape))
    return tuple(pairs)


def _rename(
    state_dict: Mapping[str, Tensor], keys: KeyMap, *, to_diffusers: bool
) -> dict[str, Tensor]:
    """Rename every key of `state_dict`; reject unknown or missing keys and wrong shapes."""
    renames = {(a if to_diffusers else b): (b if to_diffusers else a) for a, b, _ in keys}
    shapes = {(a if to_diffusers else b): shape for a, b, shape in keys}
    check_state(state_dict, shapes)
    return {renames[key]: value for key, value in state_dict.items()}
