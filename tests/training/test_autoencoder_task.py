import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.config import tiny_config
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.training.autoencoder import (
    COLOUR_TOLERANCE,
    RenderedImages,
    autoencoder_loss,
    colour_edges,
    colour_hinge,
    perturb_latents,
    reconstruction_psnr,
)

SIZE = 16


def tiny_autoencoder(**overrides) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(replace(tiny_config().autoencoder, **overrides))


def test_loss_is_mse_plus_l1_plus_weighted_kl_per_pixel() -> None:
    model = tiny_autoencoder(kl_weight=0.5)
    images = RenderedImages(batch_size=2, size=SIZE, seed=0)(0, 0, 1)
    loss = autoencoder_loss(model, images, torch.Generator().manual_seed(3))
    reconstruction, posterior = model(
        images, sample_posterior=True, generator=torch.Generator().manual_seed(3)
    )
    kl = posterior.kl().sum() / images.numel()
    expected = F.mse_loss(reconstruction, images) + F.l1_loss(reconstruction, images) + 0.5 * kl
    torch.testing.assert_close(loss, expected)
    assert kl > 0


def test_colour_edges_mark_the_outline_of_a_flat_square() -> None:
    images = -torch.ones(1, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 1.0  # a red 4×4 square on black
    edges = colour_edges(images)[0, 0]
    ring = torch.zeros(8, 8)
    ring[1:7, 1:7] = 1  # pixels with the other colour within one step, on either side
    ring[3:5, 3:5] = 0
    assert torch.equal(edges, ring)
    assert colour_edges(torch.zeros(2, 3, 8, 8)).sum() == 0


def losses_with(**options: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(plain loss, loss with `options`, images, reconstruction error) of a tiny autoencoder
    without KL term, the posterior sampled with the same seed each time."""
    model = tiny_autoencoder(kl_weight=0.0)
    images = RenderedImages(batch_size=2, size=SIZE, seed=0)(0, 0, 1)
    generator = torch.Generator
    plain = autoencoder_loss(model, images, generator().manual_seed(3))
    with_options = autoencoder_loss(model, images, generator().manual_seed(3), **options)
    reconstruction, _ = model(images, sample_posterior=True, generator=generator().manual_seed(3))
    return plain, with_options, images, reconstruction - images


def test_edge_weight_weighs_edge_pixels_up() -> None:
    plain, weighted, images, error = losses_with(edge_weight=4.0)
    per_pixel = error.square() + error.abs()
    edges = colour_edges(images)
    assert 0 < edges.mean() < 0.5
    torch.testing.assert_close(weighted, plain + 4.0 * (edges * per_pixel).mean())


def test_colour_hinge_counts_only_pixels_drawn_beyond_the_tolerance() -> None:
    error = torch.zeros(1, 3, 2, 2)
    error[0, :, 0, 0] = 0.1  # RGB distance 0.17: within the tolerance
    assert colour_hinge(error) == 0
    error[0, 0, 1, 1] = -0.5  # one pixel 0.5 off in red: (0.5 - 0.2)² over 4 pixels
    torch.testing.assert_close(colour_hinge(error), torch.tensor((0.5 - COLOUR_TOLERANCE) ** 2 / 4))


def test_hinge_weight_adds_the_weighted_hinge_of_the_reconstruction_error() -> None:
    plain, hinged, _, error = losses_with(hinge_weight=7.0)
    assert colour_hinge(error) > 0  # an untrained decoder is far off
    torch.testing.assert_close(hinged, plain + 7.0 * colour_hinge(error))


def test_latent_noise_scales_with_each_channels_spread() -> None:
    """Scaling the latents up cannot escape the noise: it is a share of each channel's std."""
    z = torch.randn(8, 4, 4, 4) * torch.tensor([1.0, 2.0, 5.0, 0.5]).view(1, 4, 1, 1)
    noisy = perturb_latents(z, 0.3, torch.Generator().manual_seed(0))
    scaled = perturb_latents(10 * z, 0.3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled - 10 * z, 10 * (noisy - z))
    relative = (noisy - z) / z.std(dim=(0, 2, 3), keepdim=True)
    assert 0 < relative.std() < 0.3  # levels drawn from U[0, 0.3] per image
    per_image = relative.std(dim=(1, 2, 3))
    assert per_image.max() / per_image.min() > 2
    assert torch.equal(perturb_latents(z, 0.0, torch.Generator().manual_seed(0)), z)


def test_latent_noise_decodes_perturbed_latents() -> None:
    model = tiny_autoencoder(kl_weight=0.0)
    images = RenderedImages(batch_size=2, size=SIZE, seed=0)(0, 0, 1)
    loss = autoencoder_loss(model, images, torch.Generator().manual_seed(3), latent_noise=0.5)
    generator = torch.Generator().manual_seed(3)
    z = perturb_latents(model.encode(images).sample(generator), 0.5, generator)
    error = model.decode(z) - images
    torch.testing.assert_close(loss, (error.square() + error.abs()).mean())
    assert loss != autoencoder_loss(model, images, torch.Generator().manual_seed(3))


@dataclass
class TrainingRun:
    losses: list[float]
    psnr_before: float
    psnr_after: float


@pytest.fixture(scope="module")
def training_run() -> TrainingRun:
    """20 Adam steps of a tiny autoencoder on one batch of renders, PSNR before and after.

    One fixed batch: with fresh renders each step, 20 steps are too few for the trend to
    stand out of the batch-to-batch noise of the loss.
    """
    model = tiny_autoencoder()
    images = RenderedImages(batch_size=8, size=SIZE, seed=0)(0, 0, 1)
    psnr_before = reconstruction_psnr(model.eval(), n=16, size=SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(20):
        loss = autoencoder_loss(model, images, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    psnr_after = reconstruction_psnr(model.eval(), n=16, size=SIZE)
    return TrainingRun(losses, psnr_before, psnr_after)


def test_loss_is_finite_and_decreases_with_training(training_run: TrainingRun) -> None:
    losses = training_run.losses
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_psnr_is_finite_and_rises_with_training(training_run: TrainingRun) -> None:
    assert math.isfinite(training_run.psnr_before) and math.isfinite(training_run.psnr_after)
    assert training_run.psnr_after > training_run.psnr_before + 1.0


class GreyStandIn(nn.Module):
    """Reconstructs every image as mid-grey and records what it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.seen.append(x.clone())
        return torch.zeros_like(x), None


def test_psnr_formula_on_a_grey_reconstruction() -> None:
    model = GreyStandIn()
    psnr = reconstruction_psnr(model, n=10, size=SIZE, batch_size=4)  # batches of 4, 4, 2
    x = torch.cat(model.seen)
    assert x.shape == (10, 3, SIZE, SIZE)
    original = ((x + 1) * 127.5).round().double()  # the 8-bit renders
    mse = (128.0 - original).square().mean(dim=(1, 2, 3))  # grey 0 → 127.5 → rounds to 128
    expected = (10 * torch.log10(255.0**2 / mse)).mean().item()
    assert psnr == pytest.approx(expected, abs=1e-4)


def test_psnr_of_a_perfect_reconstruction_is_very_high() -> None:
    class Identity(GreyStandIn):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x, None

    assert reconstruction_psnr(Identity(), n=4, size=SIZE) > 90


def test_evaluation_renders_are_not_training_renders() -> None:
    model = GreyStandIn()
    reconstruction_psnr(model, n=4, size=SIZE, seed=0)
    train = RenderedImages(batch_size=4, size=SIZE, seed=0)(0, 0, 1)
    assert not torch.equal(model.seen[0], train)


def test_rendered_batches_are_deterministic_per_step_and_shard() -> None:
    data = RenderedImages(batch_size=8, size=SIZE, seed=0)
    batch = data(3, 1, 2)
    assert batch.shape == (4, 3, SIZE, SIZE)
    assert batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(batch, data(3, 1, 2))
    assert torch.equal(batch, RenderedImages(batch_size=8, size=SIZE, seed=0)(3, 1, 2))
    assert not torch.equal(batch, data(3, 0, 2))
    assert not torch.equal(batch, data(4, 1, 2))
    assert not torch.equal(batch, RenderedImages(batch_size=8, size=SIZE, seed=1)(3, 1, 2))
