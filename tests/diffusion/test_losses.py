"""The diffusion training loss: its targets, its timesteps and the min-SNR-γ weights."""

from __future__ import annotations

import diffusers
import pytest
import torch

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.schedules import get_alphas_cumprod
from latentdiff.training.losses import (
    add_noise,
    diffusion_loss,
    min_snr_weights,
    sample_timesteps,
    velocity,
)


class OracleUNet:
    """Predicts exactly ε or v for x_t = √ᾱ·x0 + √(1−ᾱ)·ε from a known x0, plus `offset`."""

    def __init__(self, x0, config: DiffusionConfig, predict: str, offset: float = 0.0):
        self.x0, self.predict, self.offset = x0, predict, offset
        self.alphas_cumprod = get_alphas_cumprod(config)
        self.timesteps: list[torch.Tensor] = []

    def __call__(self, x_t, t, context):
        self.timesteps.append(t)
        alpha_bar = self.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1)
        eps = (x_t - alpha_bar.sqrt() * self.x0) / (1 - alpha_bar).sqrt()
        if self.predict == "epsilon":
            return eps + self.offset
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * self.x0 + self.offset


def loss_of(unet, x0, config, **options):
    generator = torch.Generator().manual_seed(0)
    return diffusion_loss(unet, x0, None, config, generator=generator, **options)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_target_is_eps_or_v(prediction_type):
    config = DiffusionConfig(prediction_type=prediction_type)
    x0 = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert loss_of(OracleUNet(x0, config, prediction_type), x0, config) < 1e-20
    other = "v_prediction" if prediction_type == "epsilon" else "epsilon"
    assert loss_of(OracleUNet(x0, config, other), x0, config) > 0.1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_scales_each_sample_by_its_weight(prediction_type):
    config = DiffusionConfig(prediction_type=prediction_type)
    x0 = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unet = OracleUNet(x0, config, prediction_type, offset=0.5)  # per-sample MSE = 0.25
    loss = loss_of(unet, x0, config, weighting="min_snr", min_snr_gamma=5.0)
    t = unet.timesteps[0].long()
    assert 0 <= t.min() and t.max() < 1000 and len(t.unique()) > 100
    alpha_bar = get_alphas_cumprod(config)[t]
    snr = alpha_bar / (1 - alpha_bar)
    denominator = snr if prediction_type == "epsilon" else snr + 1
    expected = torch.minimum(snr, torch.tensor(5.0)) / denominator
    torch.testing.assert_close(
        min_snr_weights(t, get_alphas_cumprod(config), prediction_type), expected
    )
    torch.testing.assert_close(loss, 0.25 * expected.mean())
    torch.testing.assert_close(loss_of(unet, x0, config), torch.tensor(0.25, dtype=torch.float64))


def test_forward_process_and_velocity_equal_diffusers():
    config = DiffusionConfig()
    reference = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    generator = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(4, 4, 8, 8, generator=generator),
        torch.randn(4, 4, 8, 8, generator=generator),
    )
    t = torch.tensor([0, 10, 500, 999])
    alphas_cumprod = get_alphas_cumprod(config)
    torch.testing.assert_close(
        add_noise(x0, eps, t, alphas_cumprod), reference.add_noise(x0, eps, t)
    )
    torch.testing.assert_close(
        velocity(x0, eps, t, alphas_cumprod), reference.get_velocity(x0, eps, t)
    )


def test_timesteps_are_uniform_without_a_high_noise_share():
    t = sample_timesteps(4096, 1000, torch.Generator().manual_seed(0))
    expected = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, expected)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_a_high_noise_share_draws_that_share_from_the_top_timesteps(share):
    t = sample_timesteps(
        20_000, 1000, torch.Generator().manual_seed(0), high_noise_share=share, high_noise_from=850
    )
    assert 0 <= t.min() and t.max() <= 999
    # P(t ≥ 850) = share + (1 − share) · 0.15; binomial std over 20,000 draws ≤ 0.0036.
    expected = share + (1 - share) * 0.15
    assert abs((t >= 850).float().mean().item() - expected) < 0.015
    assert (t >= 850).all() == (share == 1.0)
