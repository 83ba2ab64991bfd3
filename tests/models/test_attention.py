import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward as DiffusersFeedForward
from diffusers.models.attention_processor import Attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from latentdiff.config import AutoencoderConfig, UNetConfig
from latentdiff.errors import UsageError
from latentdiff.models.attention import (
    CrossAttention,
    FeedForward,
    SpatialTransformer,
    attention,
    set_attention_slice,
)
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.layers import from_tokens, to_tokens
from latentdiff.models.unet import UNet


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


# ── Sliced attention ──────────────────────────────────────────────────────────────────────


def random_unet() -> UNet:
    """A tiny SD-like U-Net (self- and cross-attention at 2 levels) with no all-zero layers."""
    config = UNetConfig(
        block_channels=(16, 32),
        layers_per_block=1,
        attention_levels=(True, True),
        num_heads=2,
        context_dim=12,
        norm_groups=8,
    )
    torch.manual_seed(0)
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
@pytest.mark.parametrize("slice_size", [1, 4, 12, 13, 50])
def test_sliced_attention_equals_whole(backend, slice_size):
    q, k, v = randn(2, 13, 12, seed=1), randn(2, 7, 12, seed=2), randn(2, 7, 12, seed=3)
    with sdpa_kernel(backend):
        whole = attention(q, k, v, heads=3)
        sliced = attention(q, k, v, heads=3, slice_size=slice_size)
    assert sliced.shape == (2, 13, 12) and sliced.is_contiguous()
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-6)


def test_slices_hold_at_most_slice_size_query_rows(monkeypatch):
    query_rows = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None):
        query_rows.append(q.shape[2])
        return sdpa(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    attention(randn(1, 10, 8), randn(1, 10, 8), randn(1, 10, 8), heads=2, slice_size=4)
    assert query_rows == [4, 4, 2]


def test_sliced_attention_passes_the_same_gradients():
    inputs = [randn(2, 9, 8, seed=i).requires_grad_() for i in (1, 2, 3)]
    attention(*inputs, heads=2).square().sum().backward()
    expected = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    attention(*inputs, heads=2, slice_size=4).square().sum().backward()
    for x, grad in zip(inputs, expected, strict=True):
        torch.testing.assert_close(x.grad, grad, atol=1e-6, rtol=1e-5)


def test_set_attention_slice_on_a_unet_keeps_its_output():
    model = random_unet()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 12, generator=generator)  # 96 then 24 query rows per attention
    context = torch.randn(2, 7, 12, generator=generator)
    t = torch.tensor([10.0, 500.0])
    layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
    assert len(layers) == 7 * 2  # 7 transformers (2 down, 1 mid, 4 up) × (self, cross)
    with torch.no_grad():
        whole = model(x, t, context)
        set_attention_slice(model, 5)
        assert all(layer.slice_size == 5 for layer in layers)
        sliced = model(x, t, context)
        set_attention_slice(model, None)
        assert all(layer.slice_size is None for layer in layers)
    assert whole.abs().mean() > 0.05  # not a trivial output
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context), whole, atol=0, rtol=0)


def test_set_attention_slice_on_the_autoencoder_attention():
    config = AutoencoderConfig(block_channels=(8, 16), layers_per_block=1, norm_groups=4)
    torch.manual_seed(0)
    model = Autoencoder(config).eval()
    z = randn(1, 4, 6, 5, seed=1)  # 30 pixels attend to each other in the mid block
    with torch.no_grad():
        whole = model.decode(z)
        set_attention_slice(model, 7)
        sliced = model.decode(z)
    assert model.decoder.mid.attn.attention.slice_size == 7
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_set_attention_slice_refuses_a_bad_size(bad):
    model = CrossAttention(8, 2)
    with pytest.raises(UsageError, match="positive integer"):
        set_attention_slice(model, bad)
    assert model.slice_size is None
