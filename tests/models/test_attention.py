import pytest
import torch
from diffusers.models.attention import FeedForward as DiffusersFeedForward
from diffusers.models.attention_processor import Attention

from latentdiff.models.attention import (
    CrossAttention,
    FeedForward,
    SpatialTransformer,
    attention,
)
from latentdiff.models.layers import from_tokens, to_tokens


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_attention_is_softmax_of_scaled_scores_per_head():
    heads, d = 3, 4
    q, k, v = (
        randn(2, 5, heads * d, seed=1),
        randn(2, 7, heads * d, seed=2),
        randn(2, 7, heads * d, seed=3),
    )
    split = [x.view(2, -1, heads, d).transpose(1, 2) for x in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2) / d**0.5).softmax(dim=-1)
    expected = (weights @ split[2]).transpose(1, 2).reshape(2, 5, heads * d)
    torch.testing.assert_close(attention(q, k, v, heads), expected)


@pytest.mark.parametrize("context_dim", [None, 6])
def test_cross_attention_matches_diffusers(context_dim):
    torch.manual_seed(0)
    reference = Attention(16, cross_attention_dim=context_dim, heads=4, dim_head=4).eval()
    ours = CrossAttention(16, 4, context_dim=context_dim)
    state = {k.replace("to_out.0.", "to_out."): v for k, v in reference.state_dict().items()}
    ours.load_state_dict(state)
    x = randn(2, 9, 16, seed=1)
    context = None if context_dim is None else randn(2, 5, context_dim, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, context), reference(x, context), atol=1e-6, rtol=1e-5)


def test_geglu_feed_forward_matches_diffusers():
    torch.manual_seed(0)
    reference = DiffusersFeedForward(8, activation_fn="geglu")
    ours = FeedForward(8)
    names = {"net.0.proj": "proj_in", "net.2": "proj_out"}
    ours.load_state_dict(
        {
            names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v
            for k, v in reference.state_dict().items()
        }
    )
    x = randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_conv_and_linear_projections_compute_the_same_map():
    conv = SpatialTransformer(16, 2, 6, depth=2, groups=4)
    linear = SpatialTransformer(16, 2, 6, depth=2, groups=4, linear_projection=True)
    for p in conv.parameters():
        torch.nn.init.normal_(p, std=0.2)
    linear.load_state_dict(
        {
            k: v.flatten(1) if k.startswith("proj_") and v.ndim == 4 else v
            for k, v in conv.state_dict().items()
        }
    )
    x, context = randn(2, 16, 4, 6, seed=1), randn(2, 3, 6, seed=2)
    with torch.no_grad():
        out = conv(x, context)
        torch.testing.assert_close(linear(x, context), out, atol=1e-5, rtol=1e-5)
    assert (out - x).abs().mean() > 0.01


def test_tokens_round_trip_without_copy_in_channels_last():
    x = randn(2, 8, 3, 5).to(memory_format=torch.channels_last)
    tokens = to_tokens(x)
    assert tokens.shape == (2, 15, 8)
    assert tokens.data_ptr() == x.data_ptr() and tokens.is_contiguous()
    torch.testing.assert_close(tokens[1, 5 + 2], x[1, :, 1, 2])
    assert torch.equal(from_tokens(tokens, 3, 5), x)
