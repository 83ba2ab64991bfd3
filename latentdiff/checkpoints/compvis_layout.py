"""State-dict keys of the original Stable Diffusion single files (CompVis / Stability layout) ↔ ours.

An original checkpoint holds one `LatentDiffusion` module: the U-Net under
`model.diffusion_model.` (CompVis `openaimodel.UNetModel`: `input_blocks` / `middle_block` /
`output_blocks` numbered in running order), the autoencoder under `first_stage_model.` and the
text encoder under `cond_stage_model.` — transformers' `CLIPTextModel` for SD 1.x
(`cond_stage_model.transformer.text_model.`), OpenCLIP's text tower for SD 2.x
(`cond_stage_model.model.`).

As in diffusers_layout.py the key pairs are derived from latentdiff's own module tree (built
on the "meta" device) — here a table of module prefixes that follows CompVis' running
numbering, plus a short rule list per module type — so a module added to the models cannot
go unmapped; conversions reject unknown keys, missing keys and wrong shapes. Tensors are
renamed, never copied, with two exceptions: the autoencoder's attention projections, which are
1×1 convolutions (C, C, 1, 1) in CompVis files and linear (C, C) here (a reshape, a view), and
CLIP's separate q/k/v projections, which our text encoder fuses into one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from latentdiff.checkpoints.bundle import empty_modules
from latentdiff.checkpoints.transformers_layout import (
    TEXT_MODEL_PREFIX,
    text_encoder_from_transformers,
    text_encoder_to_transformers,
)
from latentdiff.config import AutoencoderConfig, ModelConfig, TextEncoderConfig, UNetConfig
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.unet import UNet
from latentdiff.training.checkpoint import check_state

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

TextLayout = Literal["clip", "openclip"]

# Rules applied, in order, to the part of a key after its module's prefix.
RESNET_RULES = (
    (r"^norm1\.", "in_layers.0."),
    (r"^conv1\.", "in_layers.2."),
    (r"^time_proj\.", "emb_layers.1."),
    (r"^norm2\.", "out_layers.0."),
    (r"^conv2\.", "out_layers.3."),
    (r"^shortcut\.", "skip_connection."),
)
TRANSFORMER_RULES = (
    (r"^blocks\.(\d+)\.", r"transformer_blocks.\1."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
)
VAE_RESNET_RULES = ((r"^shortcut\.", "nin_shortcut."),)
VAE_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
OPENCLIP_RULES = (
    (r"^position_embedding$", "positional_embedding"),
    (r"^blocks\.", "transformer.resblocks."),
    (r"\.attn\.qkv\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"^final_layer_norm\.", "ln_final."),
)

Prefixes = tuple[tuple[str, str, tuple], ...]
"""(our module prefix, CompVis module prefix, rules for the rest of the key)."""
KeyMap = tuple[tuple[str, str, torch.Size, torch.Size], ...]
"""(our key, CompVis key, our shape, CompVis shape) for every tensor."""


# ── Whole model ───────────────────────────────────────────────────────────────────────────


def model_to_compvis(
    states: Mapping[str, Mapping[str, Tensor]], config: ModelConfig
) -> dict[str, Tensor]:
    """latentdiff weights per component → the keys of an original single file."""
    _check_components(states)
    return {
        **unet_to_compvis(states["unet"], config.unet),
        **autoencoder_to_compvis(states["autoencoder"], config.autoencoder),
        **text_encoder_to_compvis(states["text_encoder"], config.text_encoder),
    }


def model_from_compvis(
    tensors: Mapping[str, Tensor], config: ModelConfig
) -> dict[str, dict[str, Tensor]]:
    """The keys of an original single file (and nothing else) → latentdiff weights per component.

    `config` describes the file as written, i.e. `written_config(...)` of the model it came from.
    """
    tensors = canonical_clip_keys(tensors)
    check_state(tensors, compvis_shapes(config))
    return {
        "autoencoder": autoencoder_from_compvis(_under(tensors, VAE_PREFIX), config.autoencoder),
        "unet": unet_from_compvis(_under(tensors, UNET_PREFIX), config.unet),
        "text_encoder": text_encoder_from_compvis(
            _under(tensors, "cond_stage_model."), config.text_encoder
        ),
    }


def compvis_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Every key (→ shape) that an original single file of this config holds, and no other."""
    return {
        **{theirs: shape for _, theirs, _, shape in _unet_keys(config.unet)},
        **{theirs: shape for _, theirs, _, shape in _vae_keys(config.autoencoder)},
        **_text_shapes(config.text_encoder),
    }


def written_config(config: ModelConfig) -> ModelConfig:
    """The config that a single file written from `config` describes (see `written_text_config`)."""
    return dataclasses.replace(config, text_encoder=written_text_config(config.text_encoder))


# ── U-Net ─────────────────────────────────────────────────────────────────────────────────


def unet_to_compvis(state: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """latentdiff U-Net weights → `model.diffusion_model.*`."""
    return _rename(state, _unet_keys(config), to_compvis=True)


def unet_from_compvis(state: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """`model.diffusion_model.*` weights → latentdiff U-Net weights."""
    return _rename(state, _unet_keys(config), to_compvis=False)


def _unet_prefixes(config: UNetConfig) -> Prefixes:
    """CompVis numbers the U-Net's blocks in running order: input_blocks.0 is conv_in, then
    one block per ResBlock (+ transformer at slot 1) or Downsample; each output block holds a
    ResBlock (+ transformer) and, closing a level, the Upsample in the next free slot."""
    levels, per_level = len(config.block_channels), config.layers_per_block
    prefixes = [
        ("conv_in.", "input_blocks.0.0.", ()),
        ("time_embed.linear_1.", "time_embed.0.", ()),
        ("time_embed.linear_2.", "time_embed.2.", ()),
        ("mid.res1.", "middle_block.0.", RESNET_RULES),
        ("mid.transformer.", "middle_block.1.", TRANSFORMER_RULES),
        ("mid.res2.", "middle_block.2.", RESNET_RULES),
        ("norm_out.", "out.0.", ()),
        ("conv_out.", "out.2.", ()),
    ]
    index = 1
    for level in range(levels):
        for block in range(per_level):
            ours = f"down.{level}.blocks.{block}."
            prefixes.append((ours + "resnet.", f"input_blocks.{index}.0.", RESNET_RULES))
            prefixes.append((ours + "transformer.", f"input_blocks.{index}.1.", TRANSFORMER_RULES))
            index += 1
        if level < levels - 1:
            prefixes.append((f"down.{level}.resample.conv.", f"input_blocks.{index}.0.op.", ()))
            index += 1
    index = 0
    for position, level in enumerate(reversed(range(levels))):
        for block in range(per_level + 1):
            ours = f"up.{position}.blocks.{block}."
            prefixes.append((ours + "resnet.", f"output_blocks.{index}.0.", RESNET_RULES))
            prefixes.append((ours + "transformer.", f"output_blocks.{index}.1.", TRANSFORMER_RULES))
            index += 1
        if level > 0:
            slot = 2 if config.attention_levels[level] else 1
            prefixes.append((f"up.{position}.resample.", f"output_blocks.{index - 1}.{slot}.", ()))
    return tuple(prefixes)


@functools.lru_cache(maxsize=8)
def _unet_keys(config: UNetConfig) -> KeyMap:
    with empty_modules():
        state = UNet(config).state_dict()
    return _key_map(state, _unet_prefixes(config), UNET_PREFIX)


# ── Autoencoder ───────────────────────────────────────────────────────────────────────────


def autoencoder_to_compvis(
    state: Mapping[str, Tensor], config: AutoencoderConfig
) -> dict[str, Tensor]:
    """latentdiff autoencoder weights → `first_stage_model.*` (attention as 1×1 convolutions)."""
    return _rename(state, _vae_keys(config), to_compvis=True)


def autoencoder_from_compvis(
    state: Mapping[str, Tensor], config: AutoencoderConfig, prefix: str = VAE_PREFIX
) -> dict[str, Tensor]:
    """`first_stage_model.*` weights (without the unused `loss.*`) → latentdiff weights;
    `prefix=""` reads a standalone VAE file (`encoder.*`, `decoder.*`, …)."""
    return _rename(state, _vae_keys(config, prefix), to_compvis=False)


def _vae_prefixes(config: AutoencoderConfig) -> Prefixes:
    """CompVis numbers the decoder's levels by resolution (up.0 is the full-resolution one,
    run last); ours run in order, lowest resolution first."""
    levels, per_level = len(config.block_channels), config.layers_per_block
    prefixes: list[tuple[str, str, tuple]] = []
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.mid.res1.", f"{part}.mid.block_1.", VAE_RESNET_RULES),
            (f"{part}.mid.res2.", f"{part}.mid.block_2.", VAE_RESNET_RULES),
            (f"{part}.mid.attn.norm.", f"{part}.mid.attn_1.norm.", ()),
        ]
        prefixes += [
            (f"{part}.mid.attn.attention.{ours}.", f"{part}.mid.attn_1.{theirs}.", ())
            for ours, theirs in VAE_ATTENTION.items()
        ]
    for level in range(levels):
        for block in range(per_level):
            prefixes.append(
                (
                    f"encoder.down.{level}.resnets.{block}.",
                    f"encoder.down.{level}.block.{block}.",
                    VAE_RESNET_RULES,
                )
            )
        prefixes.append(
            (f"encoder.down.{level}.resample.", f"encoder.down.{level}.downsample.", ())
        )
        theirs = levels - 1 - level
        for block in range(per_level + 1):
            prefixes.append(
                (
                    f"decoder.up.{level}.resnets.{block}.",
                    f"decoder.up.{theirs}.block.{block}.",
                    VAE_RESNET_RULES,
                )
            )
        prefixes.append((f"decoder.up.{level}.resample.", f"decoder.up.{theirs}.upsample.", ()))
    return tuple(prefixes)  # every other key (conv_in, norm_out, quant_conv, …) keeps its name


@functools.lru_cache(maxsize=8)
def _vae_keys(config: AutoencoderConfig, prefix: str = VAE_PREFIX) -> KeyMap:
    with empty_modules():
        state = Autoencoder(config).state_dict()
    pairs = []
    for ours, theirs, shape, _ in _key_map(state, _vae_prefixes(config), prefix):
        # CompVis' AttnBlock projects with 1×1 convolutions: the same matrices, two more dims.
        conv = re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", theirs) is not None
        pairs.append((ours, theirs, shape, shape + (1, 1) if conv else shape))
    return tuple(pairs)


# ── Text encoder ──────────────────────────────────────────────────────────────────────────


def text_layout(config: TextEncoderConfig) -> TextLayout:
    """How a single file stores this text encoder.

    OpenAI's CLIP (SD 1.x) uses quick_gelu and is stored as transformers' `CLIPTextModel`;
    OpenCLIP (SD 2.x) uses exact GELU and is stored in OpenCLIP's own layout.
    """
    return "clip" if config.activation == "quick_gelu" else "openclip"


def written_text_config(config: TextEncoderConfig) -> TextEncoderConfig:
    """The text encoder that a single file written from `config` holds.

    Every SD 2.x loader takes OpenCLIP's *penultimate* layer. A text encoder that hands its
    last layer to the U-Net (what a diffusers SD 2 folder holds: the first 23 of 24 layers) is
    therefore written with one more block of zeros: in a pre-LayerNorm residual block whose
    output projections (and everything else) are zero both branches add 0, so the block is the
    identity and the penultimate output of the written model is the last output of this one.
    """
    if text_layout(config) == "openclip" and config.output_layer == "last":
        return dataclasses.replace(config, layers=config.layers + 1, output_layer="penultimate")
    return config


def text_encoder_to_compvis(
    state: Mapping[str, Tensor], config: TextEncoderConfig
) -> dict[str, Tensor]:
    """latentdiff text-encoder weights → `cond_stage_model.*` (see `written_text_config`)."""
    check_state(state, _our_text_shapes(config))
    if text_layout(config) == "clip":
        theirs = text_encoder_to_transformers(state, prefix=TEXT_MODEL_PREFIX)
        return {CLIP_PREFIX + key: tensor for key, tensor in theirs.items()}
    state = dict(state)
    if written_text_config(config) != config:
        reference = state["final_layer_norm.weight"]
        with empty_modules():
            block = TextEncoder(config).blocks[0].state_dict()
        for key, tensor in block.items():
            state[f"blocks.{config.layers}.{key}"] = torch.zeros(
                tensor.shape, dtype=reference.dtype, device=reference.device
            )
    written = written_text_config(config)
    return _rename(state, _openclip_keys(written), to_compvis=True)


def text_encoder_from_compvis(
    state: Mapping[str, Tensor], config: TextEncoderConfig
) -> dict[str, Tensor]:
    """`cond_stage_model.*` weights (CLIP with or without `text_model.`, or OpenCLIP; without
    the unused `position_ids`, `text_projection`, `logit_scale`) → latentdiff weights."""
    if text_layout(config) == "clip":
        state = canonical_clip_keys(state)
        check_state(state, _text_shapes(config))
        return text_encoder_from_transformers(
            {key.removeprefix(CLIP_PREFIX): tensor for key, tensor in state.items()}
        )
    return _rename(state, _openclip_keys(config), to_compvis=False)


def canonical_clip_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every key through `canonical_key`."""
    return {canonical_key(key): tensor for key, tensor in state.items()}


def canonical_key(key: str) -> str:
    """`cond_stage_model.transformer.X` → `cond_stage_model.transformer.text_model.X`.

    The standard layout nests CLIP in `text_model.`; transformers 5.x saves `CLIPTextModel`
    without it, and files written from such a state dict lack it too. Other keys pass as is.
    """
    text_model = CLIP_PREFIX + TEXT_MODEL_PREFIX
    if key.startswith(CLIP_PREFIX) and not key.startswith(text_model):
        return text_model + key.removeprefix(CLIP_PREFIX)
    return key


def _text_shapes(config: TextEncoderConfig) -> dict[str, torch.Size]:
    if text_layout(config) == "openclip":
        return {theirs: shape for _, theirs, _, shape in _openclip_keys(config)}
    theirs = text_encoder_to_transformers(_meta_text_state(config), prefix=TEXT_MODEL_PREFIX)
    return {CLIP_PREFIX + key: tensor.shape for key, tensor in theirs.items()}


def _our_text_shapes(config: TextEncoderConfig) -> dict[str, torch.Size]:
    return {key: tensor.shape for key, tensor in _meta_text_state(config).items()}


def _meta_text_state(config: TextEncoderConfig) -> dict[str, Tensor]:
    with empty_modules():
        return TextEncoder(config).state_dict()


@functools.lru_cache(maxsize=8)
def _openclip_keys(config: TextEncoderConfig) -> KeyMap:
    pairs = []
    for key, tensor in _meta_text_state(config).items():
        theirs = key
        for pattern, replacement in OPENCLIP_RULES:
            theirs = re.sub(pattern, replacement, theirs)
        pairs.append((key, OPENCLIP_PREFIX + theirs, tensor.shape, tensor.shape))
    return tuple(pairs)


# ── Shared ────────────────────────────────────────────────────────────────────────────────


def _key_map(state: Mapping[str, Tensor], prefixes: Prefixes, their_prefix: str) -> KeyMap:
    pairs = []
    for key, tensor in state.items():
        theirs = key
        for ours, compvis, rules in prefixes:
            if key.startswith(ours):
                theirs = compvis + _apply(rules, key[len(ours) :])
                break
        pairs.append((key, their_prefix + theirs, tensor.shape, tensor.shape))
    return tuple(pairs)


def _apply(rules: tuple, name: str) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _rename(state: Mapping[str, Tensor], keys: KeyMap, *, to_compvis: bool) -> dict[str, Tensor]:
    """Rename (and, for 1×1 convolutions, reshape) every tensor; reject bad keys or shapes."""
    source, target = (0, 1) if to_compvis else (1, 0)
    check_state(state, {entry[source]: entry[source + 2] for entry in keys})
    return {
        entry[target]: state[entry[source]].reshape(entry[target + 2])
        if entry[2] != entry[3]
        else state[entry[source]]
        for entry in keys
    }


def _check_components(states: Mapping[str, Mapping[str, Tensor]]) -> None:
    names = {"autoencoder", "unet", "text_encoder"}
    if set(states) != names:
        raise UsageError(f"need weights for exactly {sorted(names)}, got {sorted(states)}")


def _under(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key: tensor for key, tensor in tensors.items() if key.startswith(prefix)}
