"""The denoising diffusion training loss (Ho et al. 2020), with optional min-SNR-γ weighting.

At a uniformly drawn timestep t the U-Net sees x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε and regresses
ε, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022) for v-prediction models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.schedules import get_alphas_cumprod

UNet = Callable[[Tensor, Tensor, Tensor], Tensor]


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """Timesteps up to 999 and squared errors need more precision than half types give."""
    return torch.promote_types(dtype, torch.float32)


def _coefficients(t: Tensor, alphas_cumprod: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)) per sample, shaped (B, 1, …, 1) to broadcast against `like`.

    Computed where ᾱ lives (float64 on the CPU: 1 − ᾱ_t near t = 0 is too small for half
    types, and some devices have no float64), then moved to `like`'s device.
    """
    alpha_bar = alphas_cumprod[t.to(alphas_cumprod.device)]
    shape = (-1, *([1] * (like.ndim - 1)))
    dtype = _at_least_float32(like.dtype)
    sqrt_alpha_bar, sqrt_one_minus = (
        c.reshape(shape).to(like.device, dtype) for c in (alpha_bar.sqrt(), (1 - alpha_bar).sqrt())
    )
    return sqrt_alpha_bar, sqrt_one_minus


def add_noise(x0: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The forward process q(x_t | x0): √ᾱ_t·x0 + √(1−ᾱ_t)·ε, per sample t (B,)."""
    sqrt_alpha_bar, sqrt_one_minus = _coefficients(t, alphas_cumprod, x0)
    return (sqrt_alpha_bar * x0 + sqrt_one_minus * eps).to(x0.dtype)


def velocity(x0: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·x0, the v-prediction target."""
    sqrt_alpha_bar, sqrt_one_minus = _coefficients(t, alphas_cumprod, x0)
    return (sqrt_alpha_bar * eps - sqrt_one_minus * x0).to(x0.dtype)


def min_snr_weights(
    t: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: Literal["epsilon", "v_prediction"],
    gamma: float = 5.0,
) -> Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), per sample t (B,), on ᾱ's device.

    With SNR = ᾱ/(1−ᾱ), the x0-space weight min(SNR, γ) becomes min(SNR, γ)/SNR for the ε
    loss (‖ε̂ − ε‖² = ‖x̂0 − x0‖²·SNR) and min(SNR, γ)/(SNR + 1) for the v loss
    (‖v̂ − v‖² = ‖x̂0 − x0‖²·(SNR + 1)).
    """
    alpha_bar = alphas_cumprod[t.to(alphas_cumprod.device)]
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


HIGH_NOISE_FROM = 850
"""Default first timestep of `sample_timesteps`' high-noise range: ᾱ = 0.023 on SD's schedule,
0.008 on its zero-terminal-SNR rescaling."""


def sample_timesteps(
    batch: int,
    num_train_timesteps: int,
    generator: torch.Generator,
    *,
    high_noise_share: float = 0.0,
    high_noise_from: int = HIGH_NOISE_FROM,
) -> Tensor:
    """t ~ U{0, …, T−1} (B,); with a `high_noise_share`, each t is instead drawn from
    U{high_noise_from, …, T−1} with that probability.

    Why: an image's layout is settled while the noise is high, so what only decides the
    layout (a position phrase; docs/MODEL.md) gets a gradient from the top ~15 % of timesteps
    alone. Drawing half of them there trained the shapes model's token layout bias in a
    fraction of the steps. The loss is not reweighted: the emphasis is the point.
    """
    device = generator.device
    t = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device)
    if high_noise_share > 0:
        high = torch.randint(
            high_noise_from, num_train_timesteps, (batch,), generator=generator, device=device
        )
        pick = torch.rand(batch, generator=generator, device=device) < high_noise_share
        t = torch.where(pick, high, t)
    return t


def diffusion_loss(
    unet: UNet,
    x0: Tensor,
    context: Tensor,
    config: DiffusionConfig,
    *,
    generator: torch.Generator,
    weighting: Literal["none", "min_snr"] = "none",
    min_snr_gamma: float = 5.0,
    high_noise_share: float = 0.0,
    high_noise_from: int = HIGH_NOISE_FROM,
) -> Tensor:
    """Mean over the batch of the per-sample MSE between the U-Net output and its target.

    Draws t (B,) by `sample_timesteps` and then ε ~ N(0, I) like x0, in that order, from
    `generator` (which must live on x0's device).
    """
    batch = x0.shape[0]
    alphas_cumprod = get_alphas_cumprod(config)
    t = sample_timesteps(
        batch,
        config.num_train_timesteps,
        generator,
        high_noise_share=high_noise_share,
        high_noise_from=high_noise_from,
    )
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = add_noise(x0, eps, t, alphas_cumprod)
    if config.prediction_type == "epsilon":
        target = eps
    else:
        target = velocity(x0, eps, t, alphas_cumprod)
    prediction = unet(x_t, t.to(_at_least_float32(x0.dtype)), context)
    error = prediction.to(_at_least_float32(prediction.dtype)) - target
    mse = error.pow(2).flatten(1).mean(dim=1)  # (B,)
    if weighting == "min_snr":
        weights = min_snr_weights(t, alphas_cumprod, config.prediction_type, min_snr_gamma)
        mse = mse * weights.to(mse.device, mse.dtype)
    elif weighting != "none":
        raise ValueError(f"unknown loss weighting {weighting!r}; choose 'none' or 'min_snr'")
    return mse.mean()
