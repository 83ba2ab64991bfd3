"""CLIP's text transformer: the U-Net's conditioning (Radford et al. 2021; SD's frozen text encoder).

Token + learned position embedding, pre-LN transformer blocks under a causal mask, a final
LayerNorm. The causal mask matters beyond fidelity to CLIP: a token's state depends only on the
tokens before it, so the padding after end-of-text never changes the prompt's states.

The blocks here are shared with CLIP's image tower (`models/clip.py`, without the mask).
Weights map one to one onto transformers' `CLIPTextModel` (`checkpoints/transformers_layout.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentdiff.config import TextEncoderConfig
from latentdiff.models.tokenizer import EOS_ID

MLP_RATIO = 4
TOKEN_INIT_STD = 0.02
POSITION_INIT_STD = 0.01


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU; its checkpoints were trained with it."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"quick_gelu": quick_gelu, "gelu": F.gelu}

# How many of the last blocks the U-Net's context skips (SD 2.x: the penultimate layer).
SKIPPED_BLOCKS = {"last": 0, "penultimate": 1}


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused q, k, v projection."""

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, D / heads)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(x.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, MLP_RATIO * width)
        self.activation = ACTIVATIONS[activation]
        self.fc2 = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, activation: str, causal: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def initialize_weights(self, layers: int) -> None:
        """OpenAI CLIP's init. Each residual branch's output projection is scaled down by
        √(2·layers), so the residual stream's variance stays bounded however deep the stack."""
        width = self.ln_1.normalized_shape[0]
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        for linear, std in [
            (self.attn.qkv, attn_std),
            (self.attn.out_proj, proj_std),
            (self.mlp.fc1, (2 * width) ** -0.5),
            (self.mlp.fc2, proj_std),
        ]:
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)


class TextEncoder(nn.Module):
    """Token ids (B, L) → hidden states (B, L, width) for the U-Net's cross-attention.

    `forward` returns `final_layer_norm(h_k)`, where h_k is the residual stream after block k,
    k = layers for `output_layer="last"` (= transformers' `last_hidden_state`) and
    k = layers − 1 for `"penultimate"` (= `final_layer_norm(hidden_states[-2])` in
    transformers, which is what SD 2.x's OpenCLIP embedder feeds the U-Net). The last block is
    still built for "penultimate", so that full CLIP checkpoints load and `pooled` stays CLIP's.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.width, config.heads, config.activation, causal=True)
            for _ in range(config.layers)
        )
        self.final_layer_norm = nn.LayerNorm(config.width)
        self.context_depth = config.layers - SKIPPED_BLOCKS[config.output_layer]
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=TOKEN_INIT_STD)
        nn.init.normal_(self.position_embedding, std=POSITION_INIT_STD)
        for block in self.blocks:
            block.initialize_weights(len(self.blocks))

    def forward(self, input_ids: Tensor) -> Tensor:
        """The configured output layer's states, final LayerNorm applied, (B, L, width)."""
        return self.final_layer_norm(self._residual_stream(input_ids, self.context_depth))

    def pooled(self, input_ids: Tensor, eos_token_id: int = EOS_ID) -> Tensor:
        """CLIP's pooled output (B, width): the last layer's final-LN state at the first eos.

        Under the causal mask only the end-of-text token has seen the whole prompt. A row
        without `eos_token_id` pools position 0 (as transformers does).
        """
        x = self.final_layer_norm(self._residual_stream(input_ids, len(self.blocks)))
        eos_position = (input_ids == eos_token_id).int().argmax(dim=-1)  # first occurrence
        return x[torch.arange(x.shape[0], device=x.device), eos_position]

    def _residual_stream(self, input_ids: Tensor, depth: int) -> Tensor:
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(
                f"{length} tokens exceed the context length {self.config.context_length}"
            )
        x = self.token_embedding(input_ids) + self.position_embedding[:length]  # (B, L, D)
        for block in self.blocks[:depth]:
            x = block(x)
        return x
