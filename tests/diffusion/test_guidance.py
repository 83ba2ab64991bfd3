"""Classifier-free guidance as a denoiser wrapper."""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.guidance import cfg_denoiser


class RecordingDenoiser:
    """D(x, σ, context) = x / (1 + σ) + mean(context); remembers the batch sizes and the extra
    channels (`concat`) it saw."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.concats: list[torch.Tensor | None] = []

    def __call__(self, x, sigma, context, concat=None):
        self.batch_sizes.append(x.shape[0])
        self.concats.append(concat)
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


def test_concat_is_the_same_for_both_halves_and_passed_at_scale_one():
    generator = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 4, 3, 3, generator=generator), torch.tensor([2.0, 2.0])
    cond, uncond = torch.randn(2, 7, 8, generator=generator), torch.zeros(2, 7, 8)
    concat = torch.randn(2, 5, 3, 3, generator=generator)
    for scale, expected in ((7.5, torch.cat([concat, concat])), (1.0, concat)):
        denoiser = RecordingDenoiser()
        cfg_denoiser(denoiser, cond, uncond, scale, concat=concat)(x, sigma)
        assert len(denoiser.concats) == 1
        torch.testing.assert_close(denoiser.concats[0], expected, rtol=0, atol=0)
    denoiser = RecordingDenoiser()
    cfg_denoiser(denoiser, cond, uncond, 7.5)(x, sigma)
    assert denoiser.concats == [None]


def context_unet(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """A stand-in U-Net whose output depends on x_t, t and the context."""
    shift = context.mean(dim=(1, 2))[:, None, None, None]
    return torch.tanh(0.5 * x_t + shift) + 0.001 * t[:, None, None, None]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_equals_diffusers_rescale_noise_cfg(prediction_type, phi):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, generator=generator) * 3
    sigma = torch.tensor([2.5, 0.7])
    cond = torch.randn(2, 7, 8, generator=generator)
    uncond = torch.randn(2, 7, 8, generator=generator)
    config = DiffusionConfig(prediction_type=prediction_type)
    denoiser = Denoiser(context_unet, config)
    guided = cfg_denoiser(
        denoiser,
        cond,
        uncond,
        guidance_scale=7.5,
        guidance_rescale=phi,
        c_skip=lambda s: denoiser.scalings(s)[0],
    )(x, sigma)

    c_skip, c_out, c_in = (c[:, None, None, None] for c in denoiser.scalings(sigma))
    t = denoiser.sigma_to_t(sigma)
    out_cond, out_uncond = (context_unet(c_in * x, t, c) for c in (cond, uncond))
    out = out_uncond + 7.5 * (out_cond - out_uncond)
    out = rescale_noise_cfg(out, out_cond, guidance_rescale=phi)
    torch.testing.assert_close(guided, c_skip * x + c_out * out, rtol=1e-5, atol=1e-5)
    if phi == 1.0:  # the output's std is the conditional one's
        rescaled = (guided - c_skip * x) / c_out
        torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), out_cond.std(dim=(1, 2, 3)))


def test_guidance_rescale_needs_c_skip():
    with pytest.raises(ValueError, match="c_skip"):
        cfg_denoiser(RecordingDenoiser(), torch.ones(1, 2, 3), torch.ones(1, 2, 3), 5.0,
                     guidance_rescale=0.5)  # fmt: skip


def guidance_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 3, generator=generator)
    cond, uncond = torch.randn(2, 2, 7, 8, generator=generator).unbind()
    return x, cond, uncond


@pytest.mark.parametrize(
    ("sigma", "guided_rows"),
    [(5.0, [True, True]), (0.5, [False, False]), (1.0, [False, False]), (8.0, [True, True])],
)
def test_guidance_interval_guides_only_for_sigma_in_lo_to_hi(sigma, guided_rows):
    x, cond, uncond = guidance_inputs()
    sigmas = torch.full((2,), sigma)
    denoiser = RecordingDenoiser()
    result = cfg_denoiser(denoiser, cond, uncond, 4.0, interval=(1.0, 8.0))(x, sigmas)
    plain = cfg_denoiser(RecordingDenoiser(), cond, uncond, 4.0)(x, sigmas)
    unguided = denoiser(x, sigmas, cond)
    for row, guided in enumerate(guided_rows):
        torch.testing.assert_close(result[row], (plain if guided else unguided)[row])
    # Outside the interval only the conditional half runs: half the batch, half the cost.
    assert denoiser.batch_sizes[0] == (4 if any(guided_rows) else 2)
    assert not torch.equal(plain, unguided)  # the two cases differ, so the test can fail


def test_guidance_interval_selects_per_sample_when_sigmas_differ():
    x, cond, uncond = guidance_inputs()
    sigmas = torch.tensor([5.0, 0.5])
    result = cfg_denoiser(RecordingDenoiser(), cond, uncond, 4.0, interval=(1.0, 8.0))(x, sigmas)
    plain = cfg_denoiser(RecordingDenoiser(), cond, uncond, 4.0)(x, sigmas)
    torch.testing.assert_close(result[0], plain[0])
    torch.testing.assert_close(result[1], RecordingDenoiser()(x, sigmas, cond)[1])
