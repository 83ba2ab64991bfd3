"""Samplers: parity with diffusers' scheduler loops on the same model outputs, and properties.

Parity: both loops are fed one fake deterministic "U-Net" (a smooth function of x_t and t) and,
for the ancestral samplers, a generator with the same seed; diffusers draws its fresh noise with
the same shape, dtype and order as ours, so the latents must agree to float32 rounding.
"""

from __future__ import annotations

import itertools

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.samplers import (
    SAMPLERS,
    final_latents,
    get_ancestral_step,
    initial_latents,
    quantize_timesteps,
    sigmas_for,
)
from latentdiff.diffusion.schedules import (
    SchedulerSettings,
    diffusion_config_from_diffusers,
    get_sigmas_karras,
)

SCHEDULERS = {
    "ddpm": diffusers.DDPMScheduler,
    "ddim": diffusers.DDIMScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler_a": diffusers.EulerAncestralDiscreteScheduler,
    "heun": diffusers.HeunDiscreteScheduler,
    "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
}
STEPS = (1, 4, 10, 25)
PREDICTIONS = ("epsilon", "v_prediction")


def fake_unet(x_t: torch.Tensor, t: torch.Tensor, context: object = None) -> torch.Tensor:
    """A deterministic stand-in for ε or v: smooth in x_t, mixes channels, depends on t."""
    t = torch.as_tensor(t, dtype=x_t.dtype).reshape(-1, 1, 1, 1)
    return torch.tanh(0.3 * x_t + 0.01 * t) + 0.1 * x_t.roll(1, dims=1)


def scheduler_config(prediction_type: str, spacing: str, karras: bool = False) -> dict:
    """A diffusers scheduler_config.json as SD ships it, with every key explicit."""
    return {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "prediction_type": prediction_type,
        "timestep_spacing": spacing,
        "steps_offset": 1,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "use_karras_sigmas": karras,
    }


def diffusers_loop(sampler: str, config: dict, steps: int, noise: torch.Tensor, **step_kwargs):
    """The scheduler loop of diffusers' StableDiffusionPipeline, without guidance."""
    scheduler = SCHEDULERS[sampler].from_config(config)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = fake_unet(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
    return x


def our_loop(sampler: str, config: dict, steps: int, noise: torch.Tensor, **options):
    diffusion = diffusion_config_from_diffusers(config)
    scheduler = SchedulerSettings.from_diffusers_config(config)
    sigmas = sigmas_for(sampler, diffusion, steps, scheduler)
    quantize = quantize_timesteps(sampler, scheduler)
    denoiser = Denoiser(fake_unet, diffusion, quantize=quantize)
    x = initial_latents(noise, sigmas, sampler, scheduler)
    x = SAMPLERS[sampler](lambda x, sigma: denoiser(x, sigma, None), x, sigmas, **options)
    return final_latents(x, sigmas)


def assert_parity(sampler, config, steps, *, eta=None, atol=5e-6):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    step_kwargs, options = {}, {}
    if sampler != "heun":  # Heun takes no generator
        step_kwargs["generator"] = torch.Generator().manual_seed(1)
        options["generator"] = torch.Generator().manual_seed(1)
    if eta is not None:
        step_kwargs["eta"] = options["eta"] = eta
    expected = diffusers_loop(sampler, config, steps, noise, **step_kwargs)
    actual = our_loop(sampler, config, steps, noise, **options)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol * max(scale, 1.0))


SPACED_CASES = [
    (sampler, prediction, steps, spacing)
    for sampler, prediction, steps, spacing in itertools.product(
        ("ddpm", "euler", "euler_a", "heun", "dpmpp_2m"),
        PREDICTIONS,
        STEPS,
        ("leading", "linspace", "trailing"),
    )
]


@pytest.mark.parametrize(("sampler", "prediction", "steps", "spacing"), SPACED_CASES)
def test_matches_diffusers_scheduler(sampler, prediction, steps, spacing):
    assert_parity(sampler, scheduler_config(prediction, spacing), steps)


# DDIMScheduler steps from t to t − T//n, not to the next listed timestep, which with
# "linspace" is a different noise level (diffusers issue #12633); ours follows the list.
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_matches_diffusers(prediction, steps, spacing, eta):
    assert_parity("ddim", scheduler_config(prediction, spacing), steps, eta=eta)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_karras_sigmas_match_diffusers(sampler, prediction, steps):
    assert_parity(sampler, scheduler_config(prediction, "leading", karras=True), steps)


# "leading" keeps σ_max moderate: the cosine schedule's σ at t = 999 is 2·10⁴, where float32
# in the σ space loses ~3 digits (and diffusers' own float32 ᾱ differs from ours by 1e-5).
# No Karras σ's for DDIMScheduler, and DPMSolverMultistepScheduler fails to run with them here.
@pytest.mark.parametrize(
    ("sampler", "karras"),
    [("ddim", False), ("dpmpp_2m", False), ("euler", False), ("euler", True), ("heun", True)],
)
def test_cosine_schedule_matches_diffusers(sampler, karras):
    config = scheduler_config("v_prediction", "leading", karras)
    assert_parity(sampler, config | {"beta_schedule": "squaredcos_cap_v2"}, 10)


# Zero terminal SNR (Lin et al. 2024): diffusers' Euler-type and DPM-Solver schedulers start at
# ᾱ_T = 2⁻²⁴ as ours do; DDIM and DDPM use ᾱ_T = 0 itself (with a single step, whose result
# is that first step alone, the two conventions differ by 1e-3, so it is left out for them).
# Both loops run in float32 from σ_max = 4096, where one rounding of x = 4096·noise is
# 4096 · 6e-8 = 2.4e-4: the tolerance.
@pytest.mark.parametrize(
    ("sampler", "steps"),
    [(s, n) for s in ("euler", "euler_a", "dpmpp_2m") for n in (1, 4, 25)]
    + [(s, n) for s in ("ddpm", "ddim") for n in (4, 25)],
)
def test_zero_terminal_snr_matches_diffusers(sampler, steps):
    config = scheduler_config("v_prediction", "trailing") | {"rescale_betas_zero_snr": True}
    assert_parity(sampler, config, steps, atol=5e-4)


def test_heun_steps_out_of_pure_noise_with_euler():
    """From σ = 4096 the trapezoid correction would weigh D's change by (σ − σ')/2σ' ≈ 51."""
    denoiser = gaussian_denoiser(mu=0.3, s=0.8)
    heun, euler = SAMPLERS["heun"], SAMPLERS["euler"]
    zero_snr = DiffusionConfig(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    for config, euler_first in [(zero_snr, True), (DiffusionConfig(), False)]:
        sigmas = sigmas_for("heun", config, 10, SchedulerSettings(spacing="trailing"))
        x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = x * sigmas[0]
        first_euler_then_heun = heun(denoiser, euler(denoiser, x, sigmas[:2]), sigmas[1:])
        assert torch.equal(heun(denoiser, x, sigmas), first_euler_then_heun) == euler_first


def test_ancestral_samplers_need_a_generator():
    sigmas = sigmas_for("euler_a", DiffusionConfig(), 4)
    with pytest.raises(ValueError, match="Generator"):
        SAMPLERS["euler_a"](lambda x, sigma: 0 * x, torch.ones(1, 1), sigmas)


def test_ancestral_step_preserves_variance_and_is_ddpm_posterior():
    sigma_from, sigma_to = torch.tensor(3.0), torch.tensor(1.5)
    sigma_down, sigma_up = get_ancestral_step(sigma_from, sigma_to)
    torch.testing.assert_close(sigma_down**2 + sigma_up**2, sigma_to**2)
    torch.testing.assert_close(sigma_down, sigma_to**2 / sigma_from)  # the posterior mean's step
    assert get_ancestral_step(sigma_from, sigma_to, eta=0.0) == (sigma_to, torch.tensor(0.0))


def test_callback_sees_every_step():
    seen = []
    sigmas = sigmas_for("dpmpp_2m", DiffusionConfig(), 5)
    SAMPLERS["dpmpp_2m"](lambda x, sigma: 0 * x, torch.ones(2, 1), sigmas, callback=seen.append)
    assert [info["i"] for info in seen] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(torch.stack([info["sigma"] for info in seen]), sigmas[:-1])


# ── Properties on Gaussian data, where the ideal denoiser is known in closed form ─────────


def gaussian_denoiser(mu: float, s: float):
    """E[x0 | x0 + σ·ε = x] for x0 ~ N(mu, s²): (s²·x + σ²·mu) / (s² + σ²)."""

    def denoiser(x, sigma):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)

    return denoiser


def run_gaussian(sampler: str, mu: float, s: float, steps: int):
    """Sample N(mu, s²) from noise; return the samples and what the exact ODE flow gives."""
    sigmas = get_sigmas_karras(steps, 0.02, 15.0).double()
    noise = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std()  # no sampling error in the statistics
    x = mu + noise * (s**2 + sigmas[0] ** 2) ** 0.5  # exactly the marginal at sigmas[0]
    generator = torch.Generator().manual_seed(1)
    samples = SAMPLERS[sampler](gaussian_denoiser(mu, s), x, sigmas, generator=generator)
    return samples, mu + s * noise  # the flow maps the marginals' quantiles onto each other


@settings(max_examples=4, deadline=None)
@given(mu=st.floats(-2.0, 2.0), s=st.floats(0.3, 2.0))
def test_deterministic_samplers_reach_the_data_distribution(mu, s):
    errors = {}
    for sampler, tolerance in [("euler", 0.05), ("ddim", 0.05), ("heun", 0.01), ("dpmpp_2m", 0.01)]:
        samples, exact = run_gaussian(sampler, mu, s, steps=50)
        assert abs(samples.mean().item() - mu) < 1e-3 * s
        assert abs(samples.std().item() / s - 1) < tolerance
        errors[sampler] = (samples - exact).abs().max().item()
    assert errors["heun"] < errors["euler"] / 10  # second order beats first order
    assert errors["dpmpp_2m"] < errors["euler"] / 10
    assert errors["ddim"] == errors["euler"]  # DDIM at η = 0 is Euler


@pytest.mark.parametrize("sampler", ["euler_a", "ddpm"])
def test_ancestral_samplers_reach_the_data_distribution(sampler):
    samples, _ = run_gaussian(sampler, mu=0.5, s=0.7, steps=100)
    assert abs(samples.mean().item() - 0.5) < 0.02
    assert abs(samples.std().item() / 0.7 - 1) < 0.05


def test_one_generator_per_sample_draws_each_row_from_its_own_generator() -> None:
    from latentdiff.diffusion.samplers import _randn_like

    x = torch.zeros(3, 2, 4, 4)
    rows = _randn_like(x, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for k, seed in enumerate((5, 6, 7)):
        alone = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(rows[k], alone)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        _randn_like(x, [torch.Generator(), torch.Generator()])


def test_ancestral_noise_continues_past_the_starting_noise() -> None:
    """The pipeline's fresh noise must not repeat the starting noise of the same generator."""
    from latentdiff.diffusion.samplers import _randn_like
    from latentdiff.pipelines.common import draw_noise, seeded_generators

    generators = seeded_generators([11, 12])
    start = draw_noise((2, 4, 4), generators, torch.device("cpu"))
    fresh = _randn_like(start, generators)
    assert not torch.allclose(start, fresh)
