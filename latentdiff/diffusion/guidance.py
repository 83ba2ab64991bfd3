"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

Guiding the denoised estimates equals guiding the U-Net outputs (ε or v) as diffusers does:
both halves share x and σ, so denoised = c_skip·x + c_out·output is affine in the output with the
same coefficients, and uncond + s·(cond − uncond) passes through it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentdiff.diffusion.denoisers import ConditionalDenoiseFn, DenoiseFn


def cfg_denoiser(
    denoiser: ConditionalDenoiseFn,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    *,
    concat: Tensor | None = None,
    guidance_rescale: float = 0.0,
    c_skip: Callable[[Tensor], Tensor] | None = None,
    interval: tuple[float, float] | None = None,
) -> DenoiseFn:
    """D'(x, σ) = D(x, σ, uncond) + s · (D(x, σ, cond) − D(x, σ, uncond)), in one batch.

    At s = 1 this is D(x, σ, cond), so the unconditional half is not computed at all.
    `concat` (B, C', H, W), the extra U-Net input of inpainting models, is the same for both
    halves: the image to repaint is no part of what guidance contrasts (as diffusers, A1111).
    `guidance_rescale` φ > 0 rescales the guided U-Net output towards the conditional one's
    standard deviation (Lin et al. 2024, §3.4; diffusers' `guidance_rescale`); it needs the
    denoiser's `c_skip(σ)`, since the U-Net output is D − c_skip·x up to a per-sample factor.
    `interval` (σ_lo, σ_hi] limits guidance to those noise levels (Kynkäänniemi et al. 2024);
    outside it D' = D(x, σ, cond), which needs only the conditional half of the batch.
    """

    def conditional(x: Tensor, sigma: Tensor) -> Tensor:
        return denoiser(x, sigma, cond, concat)

    if guidance_scale == 1:
        return conditional
    if guidance_rescale and c_skip is None:
        raise ValueError("guidance_rescale needs the denoiser's c_skip")

    context = torch.cat([uncond, cond])
    concat_in = None if concat is None else torch.cat([concat, concat])

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        inside = None if interval is None else (sigma > interval[0]) & (sigma <= interval[1])
        if inside is not None and not inside.any():
            return conditional(x, sigma)
        denoised = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), context, concat_in)
        denoised_uncond, denoised_cond = denoised.chunk(2)
        result = denoised_uncond + guidance_scale * (denoised_cond - denoised_uncond)
        if guidance_rescale:
            skip = c_skip(sigma).to(x.dtype)[:, None, None, None] * x
            result = skip + rescale_guided(result - skip, denoised_cond - skip, guidance_rescale)
        if inside is not None and not inside.all():  # samples at different σ in one batch
            result = torch.where(inside[:, None, None, None], result, denoised_cond)
        return result

    return guided


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Lin et al. 2024, eq. 15–16: guided · (φ · std(cond)/std(guided) + 1 − φ), per sample.

    Large guidance inflates the output's std, which at zero terminal SNR over-exposes images;
    matching the conditional output's std undoes that, φ blends with the plain guided output.
    """
    dims = list(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (phi * ratio + 1 - phi)
