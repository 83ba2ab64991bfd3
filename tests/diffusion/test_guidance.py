"""Classifier-free guidance as a denoiser wrapper."""

from __future__ import annotations

import torch

from latentdiff.diffusion.guidance import cfg_denoiser


class RecordingDenoiser:
    """D(x, σ, context) = x / (1 + σ) + mean(context); remembers the batch sizes it saw."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x, sigma, context):
        self.batch_sizes.append(x.shape[0])
        return x / (1 + sigma[:, None, None, None]) + context.mean(dim=(1, 2))[:, None, None, None]


def test_guided_denoiser_extrapolates_from_uncond_towards_cond_in_one_batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=generator)
    sigma = torch.tensor([2.0, 2.0])
    cond, uncond = (
        torch.randn(2, 7, 8, generator=generator),
        torch.randn(2, 7, 8, generator=generator),
    )
    denoiser = RecordingDenoiser()
    guided = cfg_denoiser(denoiser, cond, uncond, guidance_scale=7.5)(x, sigma)
    assert denoiser.batch_sizes == [4]
    d_cond, d_uncond = denoiser(x, sigma, cond), denoiser(x, sigma, uncond)
    torch.testing.assert_close(guided, d_uncond + 7.5 * (d_cond - d_uncond))


def test_scale_one_runs_the_conditional_branch_only():
    x, sigma = torch.ones(2, 1, 2, 2), torch.tensor([1.0, 1.0])
    cond, uncond = torch.full((2, 3, 4), 5.0), torch.full((2, 3, 4), -5.0)
    denoiser = RecordingDenoiser()
    guided = cfg_denoiser(denoiser, cond, uncond, guidance_scale=1.0)(x, sigma)
    assert denoiser.batch_sizes == [2]
    torch.testing.assert_close(guided, torch.full_like(x, 0.5 + 5.0))
