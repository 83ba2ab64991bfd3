"""The ε/v → D(x, σ) scalings and the σ ↔ t maps."""

from __future__ import annotations

import diffusers
import pytest
import torch

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.schedules import get_alphas_cumprod, get_training_sigmas


def oracle_unet(x0: torch.Tensor, eps: torch.Tensor, config: DiffusionConfig):
    """A U-Net that knows x0 and ε: it checks it is fed x_t = √ᾱ·x0 + √(1−ᾱ)·ε at integer t."""
    alphas_cumprod = get_alphas_cumprod(config)

    def unet(x_t, t, context):
        alpha_bar = alphas_cumprod[t.round().long()].reshape(-1, 1, 1, 1)
        torch.testing.assert_close(x_t, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)
        if config.prediction_type == "epsilon":
            return eps
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0

    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_recovers_x0_from_the_exact_prediction(prediction_type):
    config = DiffusionConfig(prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64) for _ in "ab")
    t = torch.tensor([0, 421, 999])
    sigma = get_training_sigmas(config)[t]
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps  # the σ-space sample
    denoiser = Denoiser(oracle_unet(x0, eps, config), config)
    torch.testing.assert_close(denoiser(x, sigma, None), x0)


def test_sigma_to_t_inverts_the_training_sigmas_and_t_to_sigma():
    config = DiffusionConfig()
    denoiser = Denoiser(None, config)
    training_sigmas = get_training_sigmas(config)
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(denoiser.sigma_to_t(training_sigmas), t)
    torch.testing.assert_close(denoiser.t_to_sigma(t), training_sigmas)
    fractional = torch.linspace(0, 999, 77, dtype=torch.float64)
    torch.testing.assert_close(denoiser.sigma_to_t(denoiser.t_to_sigma(fractional)), fractional)


def test_sigma_to_t_matches_diffusers_for_karras_sigmas_and_quantize_rounds():
    reference = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
    )
    reference.set_timesteps(13)
    sigmas = reference.sigmas[:-1].double()
    t = Denoiser(None, DiffusionConfig()).sigma_to_t(sigmas)
    torch.testing.assert_close(t, reference.timesteps.double(), rtol=0, atol=1e-3)
    quantized = Denoiser(None, DiffusionConfig(), quantize=True).sigma_to_t(sigmas)
    assert quantized.tolist() == t.round().tolist()
    assert (quantized == quantized.round()).all() and (quantized - t).abs().max() <= 0.5


def test_concat_channels_follow_the_scaled_x_unscaled():
    """Inpainting U-Nets see [c_in·x, mask, masked-image latents]; only x is scaled by c_in."""
    seen = []

    def unet(x_in, t, context):
        seen.append(x_in)
        return x_in[:, :4]

    config = DiffusionConfig()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    concat = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([14.6, 0.5])
    denoiser = Denoiser(unet, config)
    denoised = denoiser(x, sigma, None, concat)
    c_skip, c_out, c_in = (c[:, None, None, None] for c in denoiser.scalings(sigma))
    torch.testing.assert_close(seen[0], torch.cat([c_in * x, concat], dim=1))
    torch.testing.assert_close(denoised, c_skip * x + c_out * c_in * x)
    denoiser(x, sigma, None)  # no concat: the U-Net sees c_in·x alone
    torch.testing.assert_close(seen[1], c_in * x)
