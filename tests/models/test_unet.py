import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding

from latentdiff.checkpoints.diffusers_layout import diffusers_unet_config, unet_from_diffusers
from latentdiff.config import PRESETS, UNetConfig
from latentdiff.models.embeddings import timestep_embedding
from latentdiff.models.unet import UNet

CONV_HEADS = UNetConfig(
    block_channels=(16, 32),
    layers_per_block=1,
    attention_levels=(False, True),
    num_heads=2,
    context_dim=12,
    norm_groups=8,
)
LINEAR_HEAD_DIM = UNetConfig(
    block_channels=(16, 32, 32),
    layers_per_block=1,
    attention_levels=(True, False, True),
    num_heads=None,
    head_dim=8,
    transformer_depth=2,
    context_dim=12,
    norm_groups=8,
    use_linear_projection=True,
)
SD_LIKE = UNetConfig(
    block_channels=(16, 32, 32),
    layers_per_block=2,
    attention_levels=(True, True, False),
    num_heads=4,
    transformer_depth=2,
    context_dim=12,
    norm_groups=8,
    in_channels=5,
    out_channels=3,
)


def pair(config: UNetConfig, seed: int = 0) -> tuple[UNet, UNet2DConditionModel]:
    """Our U-Net carrying the weights of a randomly initialised diffusers U-Net."""
    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**diffusers_unet_config(config)).eval()
    model = UNet(config).eval()
    model.load_state_dict(unet_from_diffusers(reference.state_dict(), config))
    return model, reference


def inputs(config: UNetConfig, batch: int = 2, height: int = 16, width: int = 24):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, height, width, generator=generator)
    t = torch.tensor([3.0, 701.5])[:batch]
    context = torch.randn(batch, 7, config.context_dim, generator=generator)
    return x, t, context


@pytest.mark.parametrize("config", [CONV_HEADS, LINEAR_HEAD_DIM, SD_LIKE])
def test_matches_diffusers(config):
    model, reference = pair(config)
    x, t, context = inputs(config)
    with torch.no_grad():
        expected = reference(x, t, context).sample
        actual = model(x, t, context)
    assert expected.abs().mean() > 0.05  # random weights: a non-trivial output
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


UPSCALER_LIKE = UNetConfig(
    block_channels=(16, 32, 32),
    layers_per_block=1,
    attention_levels=(False, True, True),
    num_heads=2,
    context_dim=12,
    norm_groups=8,
    in_channels=7,
    use_linear_projection=True,
    num_class_embeds=10,
    only_cross_attention=(True, True, False),
)


def test_upscaler_structure_matches_diffusers():
    """Noise-level class embedding and cross-only first attentions, as SD's x4 upscaler."""
    model, reference = pair(UPSCALER_LIKE)
    x, t, context = inputs(UPSCALER_LIKE)
    labels = torch.tensor([3, 9])
    with torch.no_grad():
        expected = reference(x, t, context, class_labels=labels).sample
        actual = model(x, t, context, class_labels=labels)
        other_level = model(x, t, context, class_labels=torch.tensor([4, 9]))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other_level[0], actual[0])  # the label matters
    torch.testing.assert_close(other_level[1], actual[1])
    with pytest.raises(ValueError, match="class_labels"):
        model(x, t, context)


def test_integer_and_scalar_timesteps():
    model, _ = pair(CONV_HEADS)
    x, _, context = inputs(CONV_HEADS)
    with torch.no_grad():
        by_batch = model(x, torch.tensor([250, 250]), context)
        scalar = model(x, torch.tensor(250), context)
        python_int = model(x, 250, context)
    torch.testing.assert_close(scalar, by_batch)
    torch.testing.assert_close(python_int, by_batch)


@pytest.mark.parametrize("flip", [True, False])
def test_timestep_embedding_matches_diffusers(flip):
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    expected = get_timestep_embedding(t, 32, flip_sin_to_cos=flip, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 32, flip_sin_to_cos=flip), expected)


def test_channels_last_gives_the_same_output():
    model, _ = pair(LINEAR_HEAD_DIM)
    x, t, context = inputs(LINEAR_HEAD_DIM)
    with torch.no_grad():
        expected = model(x, t, context)
        model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last), t, context)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_is_close_to_fp32():
    model, _ = pair(SD_LIKE)
    x, t, context = inputs(SD_LIKE)
    with torch.no_grad():
        expected = model(x, t, context)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = model(x, t, context)
    assert actual.dtype == torch.bfloat16
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected, atol=0.05 * scale, rtol=0.05)


def test_gradients_reach_every_parameter():
    model, _ = pair(SD_LIKE)
    x, t, context = inputs(SD_LIKE)
    model(x, t, context).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_initialization_zeroes_each_residual_branch_and_the_output():
    model = UNet(SD_LIKE)
    x, t, context = inputs(SD_LIKE)
    with torch.no_grad():
        out = model(x, t, context)
    assert torch.count_nonzero(out) == 0
    assert all(
        torch.count_nonzero(level.blocks[0].resnet.conv2.weight) == 0 for level in model.down
    )
    assert model.conv_in.weight.abs().sum() > 0


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("sd15", 859_520_964),
        ("sd21", 865_910_724),
        # a 9-channel conv_in adds 5 × 320 × 3 × 3 weights
        ("sd15-inpainting", 859_535_364),
        ("sd2-inpainting", 865_925_124),
        ("sd-x4-upscaler", 473_398_020),  # published as 473 M
    ],
)
def test_parameter_count_of_full_size_presets(preset, expected):
    config = PRESETS[preset]().unet
    with torch.device("meta"):
        ours = sum(p.numel() for p in UNet(config).parameters())
        reference = UNet2DConditionModel(**diffusers_unet_config(config))
    assert ours == sum(p.numel() for p in reference.parameters())
    assert expected is None or ours == expected
