"""Key mapping between our `TextEncoder` and transformers' `CLIPTextModel`.

Ours fuses q, k, v into one `attn.qkv` projection (one matmul) and keeps the position
embedding as a plain parameter; everything else is a rename. transformers 5.x saves
`CLIPTextModel` without the `text_model.` prefix, the standard layouts (hub files, SD
single files under `cond_stage_model.transformer.`) with it: the reader accepts both, the
writer produces the standard one unless told otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from latentdiff.config import TextEncoderConfig
from latentdiff.errors import UsageError
from latentdiff.models.text_encoder import MLP_RATIO
from latentdiff.models.tokenizer import BOS_ID, EOS_ID

TEXT_MODEL_PREFIX = "text_model."
LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which our modules use

TOP_LEVEL = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "position_embedding": "embeddings.position_embedding.weight",
    "final_layer_norm.weight": "final_layer_norm.weight",
    "final_layer_norm.bias": "final_layer_norm.bias",
}
IN_BLOCK = {
    f"{ours}.{param}": f"{theirs}.{param}"
    for ours, theirs in [
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("attn.out_proj", "self_attn.out_proj"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
    ]
    for param in ("weight", "bias")
}
QKV = ("q_proj", "k_proj", "v_proj")  # the order of the chunks in our fused `attn.qkv`

_OUR_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_THEIR_BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_THEIR_QKV_KEY = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


def text_encoder_to_transformers(
    state: Mapping[str, torch.Tensor], prefix: str = TEXT_MODEL_PREFIX
) -> dict[str, torch.Tensor]:
    """Our `TextEncoder.state_dict()` → `CLIPTextModel` keys, each under `prefix`.

    `prefix=""` gives what transformers 5.x's `CLIPTextModel.load_state_dict` takes.
    """
    theirs: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in TOP_LEVEL:
            theirs[prefix + TOP_LEVEL[key]] = tensor
            continue
        layer, name = _split(_OUR_BLOCK_KEY, key)
        block = f"{prefix}encoder.layers.{layer}."
        if name.startswith("attn.qkv."):
            param = name.rsplit(".", 1)[1]
            for proj, chunk in zip(QKV, tensor.chunk(3), strict=True):
                theirs[f"{block}self_attn.{proj}.{param}"] = chunk
        else:
            theirs[block + _lookup(IN_BLOCK, name, key)] = tensor
    return theirs


def text_encoder_from_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CLIPTextModel` weights (with or without `text_model.`) → our `TextEncoder` keys.

    The `position_ids` buffer that older transformers versions saved is dropped.
    """
    theirs = {key.removeprefix(TEXT_MODEL_PREFIX): tensor for key, tensor in state.items()}
    theirs.pop("embeddings.position_ids", None)
    from_top_level = {v: k for k, v in TOP_LEVEL.items()}
    from_block = {v: k for k, v in IN_BLOCK.items()}
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in theirs.items():
        if key in from_top_level:
            ours[from_top_level[key]] = tensor
            continue
        layer, name = _split(_THEIR_BLOCK_KEY, key)
        qkv = _THEIR_QKV_KEY.fullmatch(name)
        if qkv is None:
            ours[f"blocks.{layer}.{_lookup(from_block, name, key)}"] = tensor
        elif qkv[1] == "q":  # k and v join their q
            parts = [_take(theirs, key.replace("q_proj", proj)) for proj in QKV]
            ours[f"blocks.{layer}.attn.qkv.{qkv[2]}"] = torch.cat(parts)
    return ours


def transformers_clip_text_config(
    config: TextEncoderConfig, bos_token_id: int = BOS_ID, eos_token_id: int = EOS_ID
) -> dict[str, Any]:
    """Keyword arguments of the `CLIPTextConfig` whose model has our weights' layout.

    bos/eos default to latentdiff's tokenizer ids (OpenAI's CLIP vocabulary: 49406/49407).
    transformers has no "penultimate" switch: for that output use
    `final_layer_norm(hidden_states[-2])`, as SD 2.x pipelines do.
    """
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.width,
        "intermediate_size": MLP_RATIO * config.width,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "max_position_embeddings": config.context_length,
        "hidden_act": config.activation,
        "layer_norm_eps": LAYER_NORM_EPS,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def _split(pattern: re.Pattern[str], key: str) -> tuple[str, str]:
    match = pattern.fullmatch(key)
    if match is None:
        raise UsageError(f"not a CLIP text-model weight: {key}")
    return match[1], match[2]


def _lookup(names: Mapping[str, str], name: str, key: str) -> str:
    if name not in names:
        raise UsageError(f"not a CLIP text-model weight: {key}")
    return names[name]


def _take(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise UsageError(f"CLIP text-model weights lack {key}")
    return state[key]
