"""The U-Net as a denoiser D(x, σ) → x0 estimate, the one contract every sampler relies on.

The U-Net was trained in the variance-preserving (DDPM) space: it sees x_t = √ᾱ·x0 + √(1−ᾱ)·ε
at an integer timestep t and predicts ε or v = √ᾱ·ε − √(1−ᾱ)·x0. Samplers work in the
variance-exploding space x = x0 + σ·ε, σ = √((1−ᾱ)/ᾱ), where x = x_t / √ᾱ. With
√ᾱ = 1/√(σ²+1) and √(1−ᾱ) = σ/√(σ²+1) (Karras et al. 2022, Table 1):

  c_in  = 1/√(σ²+1)                  x_t = c_in · x
  ε:    x0 = x − σ·ε                 c_skip = 1,          c_out = −σ
  v:    x0 = √ᾱ·x_t − √(1−ᾱ)·v       c_skip = 1/(σ²+1),   c_out = −σ/√(σ²+1)
        (√ᾱ·x_t = x/(σ²+1) since x_t = x/√(σ²+1))
  denoised = c_skip · x + c_out · unet(c_in · x, t(σ), context)

These scalings live only here. Inpainting U-Nets take extra input channels (mask and masked-image
latents) concatenated after c_in · x; those are conditioning, not part of x, so they are not scaled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.schedules import get_training_sigmas

UNet = Callable[[Tensor, Tensor, Tensor], Tensor]
"""unet(x_t, t, context) → ε or v, with x_t (B, C, H, W) and float timesteps t (B,)."""


class ConditionalDenoiseFn(Protocol):
    """D(x, σ (B,), context, concat) → denoised, e.g. a `Denoiser`."""

    def __call__(
        self, x: Tensor, sigma: Tensor, context: Tensor, concat: Tensor | None = None
    ) -> Tensor: ...


DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""D(x, σ (B,)) → denoised: what samplers call (context bound, e.g. by `cfg_denoiser`)."""


def eps_scalings(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) for an ε-predicting model."""
    c_in = (sigma**2 + 1) ** -0.5
    return torch.ones_like(sigma), -sigma, c_in


def v_scalings(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) for a v-predicting model (Salimans & Ho 2022)."""
    c_in = (sigma**2 + 1) ** -0.5
    return c_in**2, -sigma * c_in, c_in


SCALINGS = {"epsilon": eps_scalings, "v_prediction": v_scalings}


class Denoiser:
    """D(x, σ, context) → denoised, wrapping a discrete-time ε- or v-prediction U-Net."""

    def __init__(self, unet: UNet, config: DiffusionConfig, *, quantize: bool = False) -> None:
        """`quantize` feeds the U-Net the nearest integer timestep instead of the exact one.

        Only diffusers' DPMSolverMultistepScheduler with Karras σ's does this (it rounds the
        timesteps but keeps the unrounded σ's), so exact parity with it needs quantize=True.
        """
        self.unet = unet
        self.scalings = SCALINGS[config.prediction_type]
        self.log_sigmas = get_training_sigmas(config).log()  # (T,) increasing in t, CPU float64
        self.num_train = config.num_train_timesteps
        self.quantize = quantize

    def __call__(
        self, x: Tensor, sigma: Tensor, context: Tensor, concat: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W) at noise levels sigma (B,) → denoised (B, C, H, W).

        `concat` (B, C', H, W) are extra U-Net input channels put after c_in·x, as they are
        (an inpainting model's mask and masked-image latents, C' = C + 1).
        """
        c_skip, c_out, c_in = (c.to(x.dtype)[:, None, None, None] for c in self.scalings(sigma))
        t = self.sigma_to_t(sigma)
        # Timesteps stay at least float32: a half type cannot even hold 999 exactly.
        t = t.to(torch.promote_types(x.dtype, torch.float32))
        x_in = c_in * x if concat is None else torch.cat([c_in * x, concat.to(x.dtype)], dim=1)
        return c_skip * x + c_out * self.unet(x_in, t, context)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of σ, linear in log σ between training steps (as k-diffusion).

        This is also how diffusers maps Karras σ's to timesteps. Exact at training σ's.
        Computed in float64 on the CPU (some devices lack float64), returned like σ.
        """
        log_sigma = sigma.detach().to("cpu", torch.float64).clamp(min=1e-10).log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma) - 1).clamp(0, self.num_train - 2)
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[low + 1] - self.log_sigmas[low])
        t = low + w.clamp(0, 1)
        t = t.round() if self.quantize else t
        return t.to(sigma.device, torch.promote_types(sigma.dtype, torch.float32))

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """σ at a (fractional) timestep, interpolating log σ: the inverse of `sigma_to_t`."""
        t_cpu = t.detach().to("cpu", torch.float64)
        low = t_cpu.floor().clamp(0, self.num_train - 2).long()
        w = t_cpu - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]
        return log_sigma.exp().to(t.device, torch.promote_types(t.dtype, torch.float32))
