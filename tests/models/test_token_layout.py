import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from latentdiff.config import PRESETS
from latentdiff.models.attention import attention
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.token_layout import (
    GAIN,
    TokenLayoutBias,
    join_token_embeddings,
    split_token_embeddings,
)
from latentdiff.models.unet import UNet
from latentdiff.training.unet import LatentDiffusionModel

PLAIN = PRESETS["tiny"]().unet  # attention at level 1 (and the mid block, level 1 too)
LAYOUT = dataclasses.replace(PLAIN, token_layout_size=8)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomized(unet: UNet, seed: int = 0) -> UNet:
    """Every weight random (the zero-initialised output layers too), layout maps left alone."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if not name.startswith("token_layout."):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return unet.eval()


def test_maps_sit_on_the_attending_levels_and_the_mid_block_at_their_feature_sides() -> None:
    config = dataclasses.replace(
        LAYOUT, block_channels=(16, 32, 32), attention_levels=(True, False, False)
    )
    shapes = {k: tuple(v.shape) for k, v in UNet(config).token_layout.state_dict().items()}
    assert shapes == {"maps.0": (16, 8, 8), "maps.2": (16, 2, 2)}
    unet = UNet(LAYOUT)
    assert {k: tuple(v.shape) for k, v in unet.token_layout.state_dict().items()} == {
        "maps.1": (16, 4, 4)
    }
    assert all((v == 0).all() for v in unet.token_layout.parameters())
    assert UNet(PLAIN).token_layout is None
    assert all(PRESETS[name]().unet.token_layout_size is None for name in ("sd15", "sd21"))


def test_at_zero_the_layout_unet_computes_the_plain_unet() -> None:
    plain, layout = randomized(UNet(PLAIN)), UNet(LAYOUT).eval()
    layout.load_state_dict({**layout.state_dict(), **plain.state_dict()})
    x, t, states, embeds = (
        randn(2, 4, 8, 8),
        torch.tensor([3.0, 500.0]),
        randn(2, 5, 16),
        randn(2, 5, 16, seed=1),
    )
    expected = plain(x, t, states)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(layout(x, t, join_token_embeddings(states, embeds)), expected)
    with torch.no_grad():
        layout.token_layout.maps["1"].normal_()
    assert (layout(x, t, join_token_embeddings(states, embeds)) - expected).abs().max() > 1e-2


def test_bias_is_the_token_embedding_dotted_with_each_pixels_map_vector() -> None:
    layout = TokenLayoutBias(width=3, latent_side=8, levels=[1, 2])
    with torch.no_grad():
        for p in layout.parameters():
            p.copy_(randn(*p.shape, seed=p.numel()))
    embeds = randn(2, 5, 3)
    bias = layout.bind(embeds, latent_height=8)(4, 4)  # level 1: 8 / 4 = 2
    assert bias.shape == (2, 1, 16, 5)
    w = layout.maps["1"]  # (3, 4, 4)
    # Pixel (row 1, column 2) of the level-1 map, token 3 of prompt 1.
    expected = GAIN * (embeds[1, 3] * w[:, 1, 2]).sum()
    torch.testing.assert_close(bias[1, 0, 1 * 4 + 2, 3], expected)
    torch.testing.assert_close(
        layout.bind(embeds, latent_height=8)(2, 2)[0, 0, :, 0],
        GAIN * torch.einsum("d,dhw->hw", embeds[0, 0], layout.maps["2"]).flatten(),
    )


def test_at_another_latent_size_the_map_is_resized_bilinearly() -> None:
    layout = TokenLayoutBias(width=2, latent_side=8, levels=[1])
    with torch.no_grad():
        layout.maps["1"].copy_(randn(2, 4, 4))
    embeds = randn(1, 3, 2)
    bias = layout.bind(embeds, latent_height=16)(8, 6)  # level 1 of a 16×12 latent
    resized = F.interpolate(layout.maps["1"][None], (8, 6), mode="bilinear")[0]
    torch.testing.assert_close(bias[0, 0], GAIN * (embeds[0] @ resized.flatten(1)).T)


def test_attention_adds_the_bias_to_the_logits_of_every_head_whole_or_sliced() -> None:
    q, k, v, bias = (
        randn(2, 6, 8),
        randn(2, 4, 8, seed=1),
        randn(2, 4, 8, seed=2),
        randn(2, 1, 6, 4, seed=3),
    )
    heads = 2
    qh, kh, vh = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(4) + bias, dim=-1)
    expected = (weights @ vh).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attention(q, k, v, heads, bias=bias), expected)
    torch.testing.assert_close(attention(q, k, v, heads, slice_size=4, bias=bias), expected)


def test_join_and_split_are_inverse() -> None:
    states, embeds = randn(2, 5, 12), randn(2, 5, 12, seed=1)
    joined = join_token_embeddings(states, embeds)
    assert joined.shape == (2, 5, 24)
    split_states, split_embeds = split_token_embeddings(joined)
    assert torch.equal(split_states, states) and torch.equal(split_embeds, embeds)


def test_training_reaches_the_maps_and_the_token_embeddings_through_the_bias() -> None:
    config = PRESETS["tiny"]()
    unet = randomized(UNet(dataclasses.replace(config.unet, token_layout_size=8)))
    model = LatentDiffusionModel(unet, TextEncoder(config.text_encoder), train_text_encoder=True)
    ids = torch.randint(0, config.text_encoder.vocab_size, (2, config.text_encoder.context_length))
    model(randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), ids).square().mean().backward()
    grads = [p.grad for p in unet.token_layout.parameters()]
    assert all(g is not None and g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("bad", [0, -4])
def test_layout_size_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="token_layout_size"):
        dataclasses.replace(PLAIN, token_layout_size=bad)
