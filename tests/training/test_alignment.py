import pytest
import torch

from latentdiff.config import ImageEncoderConfig, shapes_config, tiny_config
from latentdiff.errors import UsageError
from latentdiff.models.clip import ImageEncoder
from latentdiff.training.alignment import (
    Projector,
    alignment_level,
    alignment_loss,
    patch_targets,
)


def test_the_projector_maps_each_position_in_row_major_order() -> None:
    torch.manual_seed(0)
    projector = Projector(0, 6, 5, hidden=7)
    features = torch.randn(2, 6, 3, 4)
    tokens = projector(features)
    assert tokens.shape == (2, 12, 5)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(tokens[:, 4 * i + j], projector.mlp(features[:, :, i, j]))


def test_a_projector_for_a_unet_reads_the_channels_of_its_level() -> None:
    unet = shapes_config().unet
    projector = Projector.for_unet(unet, 1, 48)
    assert projector.level == 1
    assert projector.mlp[0].in_features == unet.block_channels[1]
    assert projector.mlp[-1].out_features == 48


def test_alignment_loss_is_one_minus_the_mean_cosine() -> None:
    targets = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    assert alignment_loss(3 * targets, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(-targets, targets).item() == pytest.approx(2.0)
    orthogonal = torch.tensor([[[0.0, 5.0], [1.0, 0.0]]])
    assert alignment_loss(orthogonal, targets).item() == pytest.approx(1.0)
    half = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # cosines 1 and −1
    assert alignment_loss(half, targets).item() == pytest.approx(1.0)


def test_the_aligned_level_is_the_one_whose_grid_is_the_encoders() -> None:
    shapes = shapes_config()
    # 16×16 latents; the bundled ViT has 64 / 8 = 8 patches a side: level 1 (8×8).
    assert alignment_level(shapes.unet, 16, ImageEncoderConfig().grid_size) == 1
    assert alignment_level(shapes.unet, 16, 16) == 0
    assert alignment_level(shapes.unet, 16, 4) == 2
    with pytest.raises(UsageError, match=r"5×5 patch grid matches no U-Net level"):
        alignment_level(tiny_config().unet, 16, 5)


def test_patch_targets_are_the_towers_patch_states_in_fp16() -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(image_size=16, patch_size=4, width=8, heads=2))
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    targets = patch_targets(encoder, images)
    assert targets.shape == (3, 16, 8) and targets.dtype == torch.float16
    states = encoder.patch_states(images)
    torch.testing.assert_close(targets.float(), states, atol=2e-3, rtol=1e-3)


def test_a_patch_state_follows_its_own_patch_most() -> None:
    """Row-major order: changing patch (1, 2) of a 4×4 grid moves token 6 the most."""
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(image_size=16, patch_size=4, width=16, heads=2))
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    changed = images.clone()
    changed[:, :, 4:8, 8:12] = -changed[:, :, 4:8, 8:12]
    moved = (encoder.patch_states(changed) - encoder.patch_states(images)).norm(dim=-1)
    assert moved.argmax().item() == 1 * 4 + 2
