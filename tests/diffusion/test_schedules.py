"""Schedules: betas and ᾱ equal diffusers', timesteps and σ's equal its schedulers'."""

from __future__ import annotations

import itertools

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.samplers import sigmas_for
from latentdiff.diffusion.schedules import (
    SchedulerSettings,
    diffusion_config_from_diffusers,
    get_alphas_cumprod,
    get_betas,
    get_sigmas,
    get_sigmas_karras,
    get_timesteps,
    get_training_sigmas,
    sigmas_from_alphas_cumprod,
)
from latentdiff.errors import UsageError

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}
DIFFUSERS_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
}
SPACED = list(itertools.product((1, 3, 4, 7, 10, 25, 50), ("leading", "linspace", "trailing")))

# SD 1.5's scheduler_config.json as published: no timestep_spacing, no prediction_type keys.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


@settings(max_examples=10, deadline=None)
@given(
    schedule=st.sampled_from(["linear", "scaled_linear", "cosine"]),
    steps=st.integers(2, 2000),
    beta_start=st.floats(1e-5, 1e-3),
    ratio=st.floats(1.5, 100.0),
)
def test_betas_increase_and_alphas_cumprod_decrease_in_unit_interval(
    schedule, steps, beta_start, ratio
):
    config = DiffusionConfig(
        num_train_timesteps=steps,
        beta_schedule=schedule,
        beta_start=beta_start,
        beta_end=min(beta_start * ratio, 0.2),
    )
    betas, alphas_cumprod = get_betas(config), get_alphas_cumprod(config)
    assert betas.dtype == torch.float64 and betas.shape == (steps,)
    assert (betas > 0).all() and (betas < 1).all() and (betas.diff() >= 0).all()
    assert (alphas_cumprod > 0).all() and (alphas_cumprod < 1).all()
    assert (alphas_cumprod.diff() < 0).all()


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_alphas_cumprod_equal_diffusers(schedule):
    config = DiffusionConfig(beta_schedule=schedule, **SD_BETAS)
    reference = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULES[schedule], **SD_BETAS)
    torch.testing.assert_close(get_betas(config), reference.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        get_alphas_cumprod(config), reference.alphas_cumprod.double(), rtol=2e-5, atol=1e-9
    )


def test_sigmas_are_the_noise_to_signal_ratio():
    alphas_cumprod = torch.tensor([0.8, 0.5, 0.2], dtype=torch.float64)
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
    torch.testing.assert_close(1 / (1 + sigmas**2), alphas_cumprod)  # x/√(σ²+1) has ᾱ's scale


@pytest.mark.parametrize(("steps", "spacing"), SPACED)
def test_timesteps_equal_diffusers(steps, spacing):
    options = {"timestep_spacing": spacing, "steps_offset": 1}
    euler = diffusers.EulerDiscreteScheduler(**options)
    euler.set_timesteps(steps)
    ddim = diffusers.DDIMScheduler(**options)
    ddim.set_timesteps(steps)
    timesteps = get_timesteps(steps, 1000, spacing, steps_offset=1)
    torch.testing.assert_close(timesteps, euler.timesteps.double(), rtol=0, atol=1e-4)
    assert timesteps.round().long().tolist() == ddim.timesteps.tolist()


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize(("steps", "spacing"), SPACED)
def test_sigmas_equal_euler_scheduler(steps, spacing, karras):
    reference = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", timestep_spacing=spacing, steps_offset=1,
        use_karras_sigmas=karras, **SD_BETAS,
    )  # fmt: skip
    reference.set_timesteps(steps)
    sigmas = get_sigmas(DiffusionConfig(), steps, spacing=spacing, steps_offset=1, karras=karras)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    torch.testing.assert_close(sigmas.float(), reference.sigmas, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("steps", "spacing"), SPACED)
def test_ddim_sigmas_follow_the_listed_timesteps_then_the_final_alpha(steps, spacing):
    reference = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1)
    reference.set_timesteps(steps)
    training_sigmas = get_training_sigmas(DiffusionConfig())
    scheduler = SchedulerSettings(spacing=spacing, set_alpha_to_one=False)
    expected = torch.cat([training_sigmas[reference.timesteps], training_sigmas[:1]])
    torch.testing.assert_close(sigmas_for("ddim", DiffusionConfig(), steps, scheduler), expected)
    final_one = sigmas_for(
        "ddim", DiffusionConfig(), steps, SchedulerSettings(spacing=spacing, set_alpha_to_one=True)
    )
    assert final_one[-1] == 0


def test_karras_sigmas_follow_equation_5():
    sigmas = get_sigmas_karras(5, 0.1, 10.0, rho=7.0)
    assert sigmas.shape == (6,) and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[[0, 4]], torch.tensor([10.0, 0.1], dtype=torch.float64))
    inv_rho = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(inv_rho.diff(), inv_rho.diff()[:1].expand(4))  # even in σ^(1/ρ)


def test_sd15_scheduler_config_samples_as_diffusers_from_config():
    scheduler = SchedulerSettings.from_diffusers_config(SD15_SCHEDULER_CONFIG)
    explicit = SchedulerSettings(spacing=None, steps_offset=1, karras=False, set_alpha_to_one=False)
    # The defaults are SD's config: a checkpoint without one samples as diffusers samples SD.
    assert scheduler == explicit == SchedulerSettings()
    config = diffusion_config_from_diffusers(SD15_SCHEDULER_CONFIG)
    assert config == DiffusionConfig(prediction_type="epsilon", **SD_BETAS)
    # A key the file lacks takes the default of the class built from it: DPM-Solver's "linspace".
    for sampler, cls in [
        ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler),
        ("euler", diffusers.EulerDiscreteScheduler),
        ("ddim", diffusers.DDIMScheduler),
    ]:
        reference = cls.from_config(SD15_SCHEDULER_CONFIG)
        reference.set_timesteps(20)
        sigmas = sigmas_for(sampler, config, 20, scheduler)
        reference_sigmas = getattr(reference, "sigmas", None)
        if reference_sigmas is None:  # DDIM keeps timesteps only
            reference_sigmas = get_training_sigmas(config)[reference.timesteps]
        torch.testing.assert_close(
            sigmas[:20].float(), reference_sigmas[:20].float(), rtol=1e-5, atol=1e-6
        )


def test_zero_terminal_snr_rescale_equals_diffusers_and_keeps_sigmas_finite():
    config = DiffusionConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    alphas_cumprod = get_alphas_cumprod(config)
    reference = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", **SD_BETAS, rescale_betas_zero_snr=True
    )
    torch.testing.assert_close(alphas_cumprod.float(), reference.alphas_cumprod, rtol=0, atol=1e-6)
    assert alphas_cumprod[-1] == 0 and alphas_cumprod[0] == get_alphas_cumprod(DiffusionConfig())[0]
    sigmas = get_training_sigmas(config)
    assert sigmas[-1].item() == pytest.approx(4096) and torch.isfinite(sigmas).all()
    with pytest.raises(ValueError, match="v_prediction"):
        DiffusionConfig(rescale_betas_zero_snr=True)


def test_unsupported_scheduler_configs_are_usage_errors():
    with pytest.raises(UsageError, match="beta_schedule"):
        diffusion_config_from_diffusers({"beta_schedule": "sigmoid"})
    with pytest.raises(UsageError, match="prediction_type"):
        diffusion_config_from_diffusers({"prediction_type": "sample"})
    with pytest.raises(UsageError, match="spacing"):
        SchedulerSettings.from_diffusers_config({"timestep_spacing": "uniform"})
    with pytest.raises(UsageError, match="exceed"):
        get_timesteps(1001, 1000, "leading")
    with pytest.raises(UsageError, match="sampler"):
        sigmas_for("plms", DiffusionConfig(), 10)
