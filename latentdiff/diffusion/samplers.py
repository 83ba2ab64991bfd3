"""Samplers: pure functions over one contract, denoised = D(x, σ) (k-diffusion style).

Every sampler is `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None) -> x`:
x (B, C, H, W) lives in the variance-exploding space x = x0 + σ·ε, `sigmas` (N+1,) descend to
the last noise level (0, except DDIM's "final alpha" below), `denoiser(x, sigma (B,))` returns
the x0 estimate, and fresh noise comes only from `generator` (the ancestral samplers need one).

How the pipeline uses them — this reproduces diffusers' scheduler loops (same model outputs and
the same `generator` give the same latents up to float rounding):

    sigmas = sigmas_for(sampler, config.diffusion, steps, settings)
    quantize = quantize_timesteps(sampler, settings)
    denoiser = cfg_denoiser(Denoiser(unet, config.diffusion, quantize=quantize), cond, uncond, s)
    x = initial_latents(noise, sigmas, sampler, settings)   # noise ~ N(0, I): diffusers' latents
    x = SAMPLERS[sampler](denoiser, x, sigmas, generator=generator)
    latents = final_latents(x, sigmas)                      # what the autoencoder decodes

Initial latents: diffusers starts DDPM, DDIM and DPM-Solver from x_T = noise in the DDPM space,
i.e. x = noise·√(σ_max² + 1) here; Euler, Euler ancestral and Heun start from noise·σ_max with
"linspace"/"trailing" spacing but from noise·√(σ_max² + 1) with "leading" (their
`init_noise_sigma`). `initial_latents` applies that rule.
Final latents: the samplers return x at sigmas[-1]; diffusers decodes the DDPM-space sample
x / √(sigmas[-1]² + 1), which differs from x only for DDIM with set_alpha_to_one=False (it ends
at ᾱ_0, σ_0 ≈ 0.03, instead of σ = 0). `final_latents` applies it (a no-op when σ ends at 0).
img2img and inpainting: slice `sigmas[k:]` and start from x = x0 + noise·sigmas[0].

Known differences from diffusers: its DDIM with "linspace" spacing (diffusers issue #12633, see
`_ddim_sigmas`); and at the fractional "linspace" timesteps of Euler-type schedulers, diffusers
feeds the U-Net the listed t while `Denoiser` recovers t from σ by log-σ interpolation, which
differs by at most ~0.003 of a timestep (σ's are identical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from latentdiff.config import DiffusionConfig
from latentdiff.diffusion.denoisers import DenoiseFn
from latentdiff.diffusion.schedules import (
    ZERO_SNR_SIGMA,
    SchedulerSettings,
    Spacing,
    append_zero,
    get_sigmas,
    get_sigmas_karras,
    get_timesteps,
    get_training_sigmas,
)
from latentdiff.errors import UsageError

Callback = Callable[[dict[str, Any]], None]
Generators = torch.Generator | Sequence[torch.Generator] | None
"""Where fresh noise comes from: one generator for the batch, or one per sample."""


# ── Shared steps ──────────────────────────────────────────────────────────────────────────


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """dx/dσ of the probability-flow ODE: (x − D(x, σ)) / σ, i.e. the ε estimate."""
    return (x - denoised) / sigma


def get_ancestral_step(
    sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Split a step σ_from → σ_to into a deterministic step to σ_down plus noise of σ_up.

    σ_up² = η² · σ_to² (σ_from² − σ_to²) / σ_from² and σ_down² + σ_up² = σ_to²; at η = 1 this
    is the DDPM posterior q(x_to | x_from, x0) (see `sample_ddpm`).
    """
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Fresh noise from the caller's generator, drawn on its device (as diffusers does).

    With one generator per sample, row k comes from generator k (diffusers' list-of-generators
    rule), so a sample's noise does not depend on the rest of its batch.
    """
    if generator is None:
        raise ValueError("this sampler adds fresh noise: pass a torch.Generator")
    if isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        return noise.to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
    rows = [
        torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
        for g in generator
    ]
    return torch.stack(rows)


def _is_pure_noise(sigma: Tensor) -> bool:
    """Whether σ is a zero-terminal-SNR start (or beyond it), where x carries no signal."""
    return bool(sigma >= ZERO_SNR_SIGMA * (1 - 1e-6))


def _denoise(denoiser: DenoiseFn, x: Tensor, sigma: Tensor) -> Tensor:
    """D(x, σ) with σ broadcast to the batch, in σ's own dtype (the pipelines pass fp32)."""
    return denoiser(x, sigma.to(x.device).expand(x.shape[0]))


def _denoise_step(
    denoiser: DenoiseFn, x: Tensor, sigmas: Tensor, i: int, callback: Callback | None
) -> Tensor:
    """D(x, σ_i), reported to `callback` as {"i", "x", "sigma", "denoised"}."""
    denoised = _denoise(denoiser, x, sigmas[i])
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
    return denoised


# ── Samplers ──────────────────────────────────────────────────────────────────────────────


@torch.no_grad()
def sample_euler(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise_step(denoiser, x, sigmas, i, callback)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler step to σ_down, then fresh noise of σ_up (`get_ancestral_step`)."""
    for i in range(len(sigmas) - 1):
        denoised = _denoise_step(denoiser, x, sigmas, i, callback)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigma_up > 0:
            x = x + _randn_like(x, generator) * sigma_up
    return x


def sample_ddim(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021): x_prev = √ᾱ'·x0 + √(1 − ᾱ' − s²)·ε + s·z, written in σ.

    Dividing by √ᾱ' (σ' = √((1−ᾱ')/ᾱ')): x' = x0 + √(σ'² − (s/√ᾱ')²)·ε + (s/√ᾱ')·z, and DDIM's
    s = η·√((1−ᾱ')/(1−ᾱ)·(1 − ᾱ/ᾱ')) gives s/√ᾱ' = σ_up of `get_ancestral_step`; with
    ε = (x − x0)/σ that is an Euler step to σ_down plus σ_up·z. So DDIM is Euler ancestral at
    η (at η = 0, plain Euler), on DDIM's σ's (`sigmas_for`).
    """
    return sample_euler_ancestral(
        denoiser, x, sigmas, eta=eta, generator=generator, callback=callback
    )


def sample_ddpm(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling from the DDPM posterior (Ho et al. 2020, "fixed_small" variance).

    q(x' | x, x0) in σ: mean = (σ'²/σ²)·x + (1 − σ'²/σ²)·x0 = an Euler step to σ'²/σ = σ_down,
    variance = σ'²(σ² − σ'²)/σ² = σ_up² — i.e. DDIM with η = 1, over skipped steps as well.
    """
    return sample_euler_ancestral(
        denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback
    )


@torch.no_grad()
def sample_heun(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); the last step, to σ = 0, is Euler.

    So is a step from pure noise (σ ≥ 4096, ᾱ ≤ 2⁻²⁴: a zero-terminal-SNR start). The corrected
    step equals the Euler step plus ((σ − σ')/2σ')·(D(x_euler, σ') − D(x, σ)), a weight of 51
    for 4096 → 40 that grows without bound as ᾱ_T → 0: it multiplies the model's error in the
    change of its x0 estimate (measured on the shapes model: adherence 0.09 with it, 0.23
    without). diffusers' Heun scheduler has no zero-SNR schedule to compare with.
    """
    for i in range(len(sigmas) - 1):
        denoised = _denoise_step(denoiser, x, sigmas, i, callback)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_euler = x + d * dt
        if sigmas[i + 1] == 0 or _is_pure_noise(sigmas[i]):
            x = x_euler
        else:
            d_next = to_d(x_euler, sigmas[i + 1], _denoise(denoiser, x_euler, sigmas[i + 1]))
            x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in λ = −log σ.

    x' = (σ'/σ)·x − (e^−h − 1)·D̂ with h = λ' − λ; D̂ is the last denoised, corrected by the one
    before: D̂ = (1 + 1/2r)·D_i − (1/2r)·D_{i−1}, r = h_{i−1}/h. The first step is first order,
    and so is the step to σ = 0 (it returns D_i), as in diffusers with final σ = 0.
    """
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = _denoise_step(denoiser, x, sigmas, i, callback)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0:
            x = denoised
        else:
            h = (sigma / sigma_next).log()
            denoised_hat = denoised
            if old_denoised is not None:
                r = (sigmas[i - 1] / sigma).log() / h
                denoised_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_hat
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


# ── Discretisations: each sampler as diffusers' scheduler of the same name does it ─────────

_DIFFUSERS_DEFAULT_SPACING: dict[str, Spacing] = {
    "ddpm": "leading",
    "ddim": "leading",
    "euler": "linspace",
    "euler_a": "linspace",
    "heun": "linspace",
    "dpmpp_2m": "linspace",
}
_EULER_TYPE = ("euler", "euler_a", "heun")


def _spacing(sampler: str, settings: SchedulerSettings) -> Spacing:
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return settings.spacing or _DIFFUSERS_DEFAULT_SPACING[sampler]


def sigmas_for(
    sampler: str,
    config: DiffusionConfig,
    steps: int,
    settings: SchedulerSettings = SchedulerSettings(),  # noqa: B008 (frozen, so safe to share)
) -> Tensor:
    """The steps + 1 σ's (float64, descending) that `sampler` walks, as in diffusers.

    Karras spacing applies to every sampler (DDPM/DDIM then end at σ = 0 too).
    """
    spacing = _spacing(sampler, settings)
    if sampler == "dpmpp_2m":
        return _dpm_solver_sigmas(config, steps, spacing, settings)
    if sampler in ("ddpm", "ddim") and not settings.karras:
        return _ddim_sigmas(config, steps, spacing, settings, final_alpha_one=sampler == "ddpm")
    return get_sigmas(
        config, steps, spacing=spacing, steps_offset=settings.steps_offset, karras=settings.karras
    )


def _ddim_sigmas(
    config: DiffusionConfig,
    steps: int,
    spacing: Spacing,
    settings: SchedulerSettings,
    *,
    final_alpha_one: bool,
) -> Tensor:
    """σ at integer timesteps, then the "final alpha": ᾱ = 1 (σ = 0) or ᾱ_0 (σ_0).

    DDPM always ends at ᾱ = 1; DDIM at ᾱ_0 unless set_alpha_to_one. diffusers' DDIM steps from
    t to t − T//n rather than to the next listed timestep (diffusers issue #12633); the two agree
    for "leading" and for "trailing" when n divides T, and here the step always goes to the next.
    """
    training_sigmas = get_training_sigmas(config)
    timesteps = get_timesteps(steps, config.num_train_timesteps, spacing, settings.steps_offset)
    sigmas = training_sigmas[timesteps.round().long()]
    final = 0.0 if final_alpha_one or settings.set_alpha_to_one else training_sigmas[0].item()
    return torch.cat([sigmas, sigmas.new_tensor([final])])


def _dpm_solver_sigmas(
    config: DiffusionConfig, steps: int, spacing: Spacing, settings: SchedulerSettings
) -> Tensor:
    """DPMSolverMultistepScheduler's σ's, which differ from the other schedulers' in two ways.

    Its Karras σ's span the whole training range, and for "leading"/"linspace" it places
    steps + 1 integer timesteps (the last at t = 0) and drops that last one.
    """
    training_sigmas = get_training_sigmas(config)
    if settings.karras:
        return get_sigmas_karras(steps, training_sigmas[0].item(), training_sigmas[-1].item())
    num_train = config.num_train_timesteps
    if spacing == "trailing":
        timesteps = get_timesteps(steps, num_train, spacing)
    else:
        timesteps = get_timesteps(steps + 1, num_train, spacing, settings.steps_offset)[:-1]
    return append_zero(training_sigmas[timesteps.round().long()])


def quantize_timesteps(sampler: str, settings: SchedulerSettings) -> bool:
    """Whether diffusers feeds this sampler's U-Net rounded timesteps (see `Denoiser`).

    DPMSolverMultistepScheduler rounds the timesteps of its Karras σ's (for β schedules other
    than cosine, with which it fails to run), and no other scheduler does.
    """
    return sampler == "dpmpp_2m" and settings.karras


def initial_latents(
    noise: Tensor,
    sigmas: Tensor,
    sampler: str,
    settings: SchedulerSettings = SchedulerSettings(),  # noqa: B008 (frozen, so safe to share)
) -> Tensor:
    """x at sigmas[0] for txt2img from standard normal `noise`, as diffusers scales its latents.

    noise·√(σ_max² + 1) is x_T = noise in the DDPM space (DDPM, DDIM, DPM-Solver, and the
    Euler-type schedulers with "leading" spacing); noise·σ_max is the Euler-type default.
    """
    spacing = _spacing(sampler, settings)
    sigma_max = sigmas[0]
    if sampler in _EULER_TYPE and spacing != "leading":
        return noise * sigma_max
    return noise * (sigma_max**2 + 1) ** 0.5


def final_latents(x: Tensor, sigmas: Tensor) -> Tensor:
    """The DDPM-space sample x / √(σ_last² + 1) that diffusers decodes (x itself if σ_last = 0)."""
    return x / (sigmas[-1] ** 2 + 1) ** 0.5
