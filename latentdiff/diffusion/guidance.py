"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

Guiding the denoised estimates equals guiding the U-Net outputs (ε or v) as diffusers does:
both halves share x and σ, so denoised = c_skip·x + c_out·output is affine in the output with the
same coefficients, and uncond + s·(cond − uncond) passes through it unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentdiff.diffusion.denoisers import ConditionalDenoiseFn, DenoiseFn


def cfg_denoiser(
    denoiser: ConditionalDenoiseFn, cond: Tensor, uncond: Tensor, guidance_scale: float
) -> DenoiseFn:
    """D'(x, σ) = D(x, σ, uncond) + s · (D(x, σ, cond) − D(x, σ, uncond)), in one batch.

    At s = 1 this is D(x, σ, cond), so the unconditional half is not computed at all.
    """
    if guidance_scale == 1:
        return lambda x, sigma: denoiser(x, sigma, cond)

    context = torch.cat([uncond, cond])

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        denoised = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), context)
        denoised_uncond, denoised_cond = denoised.chunk(2)
        return denoised_uncond + guidance_scale * (denoised_cond - denoised_uncond)

    return guided
