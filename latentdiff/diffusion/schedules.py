"""Noise schedules: training betas → ᾱ_t → σ_t, and the σ discretisations used at inference.

Two views of the same forward process (Karras et al. 2022, "EDM", §2):
  variance preserving (DDPM):  x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε
  variance exploding  (here):  x   = x0 + σ · ε,   σ_t = √((1 − ᾱ_t) / ᾱ_t),   x = x_t / √ᾱ_t
Samplers work in the σ view; the U-Net sees the ᾱ view (denoisers.py converts).

The inference discretisations reproduce diffusers' schedulers exactly (their timestep rounding,
`steps_offset` and "leading"/"linspace"/"trailing" spacing), so that a checkpoint that ships a
diffusers `scheduler_config.json` samples the same σ's as diffusers does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from latentdiff.config import DiffusionConfig
from latentdiff.errors import UsageError

Spacing = Literal["leading", "linspace", "trailing"]
SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")


def _linear_betas(config: DiffusionConfig) -> Tensor:
    return torch.linspace(
        config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float64
    )


def _scaled_linear_betas(config: DiffusionConfig) -> Tensor:
    """Linear in √β (LDM / Stable Diffusion)."""
    sqrt_betas = torch.linspace(
        config.beta_start**0.5,
        config.beta_end**0.5,
        config.num_train_timesteps,
        dtype=torch.float64,
    )
    return sqrt_betas**2


def _cosine_betas(config: DiffusionConfig, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021: ᾱ(t) = cos²((t + s)/(1 + s) · π/2), s = 0.008, β capped at 0.999.

    β_i = 1 − ᾱ((i+1)/T) / ᾱ(i/T) ("squaredcos_cap_v2" in diffusers); the cap keeps β < 1 at
    t → 1 where ᾱ → 0.
    """
    steps = config.num_train_timesteps
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


_BETA_SCHEDULES = {
    "linear": _linear_betas,
    "scaled_linear": _scaled_linear_betas,
    "cosine": _cosine_betas,
}


def get_betas(config: DiffusionConfig) -> Tensor:
    """β_t for t = 0 … T−1, float64 (rescaled to zero terminal SNR if the config says so)."""
    betas = _BETA_SCHEDULES[config.beta_schedule](config)
    return rescale_zero_terminal_snr(betas) if config.rescale_betas_zero_snr else betas


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale √ᾱ_t so that √ᾱ_0 is kept and √ᾱ_T = 0.

    Stable Diffusion's schedule ends at ᾱ_T = 0.0047: x_T keeps 7 % of the image, enough for a
    model to read the image's mean (brightness, background) from the noise in training — and
    at sampling, where x_T is pure noise, to take it from the noise's random mean instead.
    """
    sqrt_alpha_bar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def get_alphas_cumprod(config: DiffusionConfig) -> Tensor:
    """ᾱ_t = ∏_{s ≤ t} (1 − β_s), float64, decreasing in (0, 1) — or to exactly 0 at t = T−1
    with `rescale_betas_zero_snr`."""
    return torch.cumprod(1 - get_betas(config), dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t): the noise-to-signal ratio of x_t."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


# ᾱ_T = 0 means σ_T = ∞; samplers start at ᾱ_T = 2⁻²⁴ (σ_T = 4096) instead, as diffusers' do.
# The U-Net input c_in·x is then the noise to within 2⁻²⁴, and every σ stays finite.
ZERO_SNR_ALPHA_BAR = 2.0**-24
ZERO_SNR_SIGMA = ((1 - ZERO_SNR_ALPHA_BAR) / ZERO_SNR_ALPHA_BAR) ** 0.5
"""σ of ᾱ = 2⁻²⁴ (≈ 4096): where a zero-terminal-SNR model's sampling starts."""


def get_training_sigmas(config: DiffusionConfig) -> Tensor:
    """σ_t for every training timestep t = 0 … T−1 (increasing, finite), float64."""
    return sigmas_from_alphas_cumprod(get_alphas_cumprod(config).clamp(min=ZERO_SNR_ALPHA_BAR))


def get_timesteps(
    num_steps: int, num_train_timesteps: int, spacing: Spacing, steps_offset: int = 0
) -> Tensor:
    """Descending inference timesteps (float64), as diffusers' `set_timesteps` computes them.

    leading:  (0, r, 2r, …, (n−1)r) + steps_offset with r = T // n   (DDIM paper, SD's configs)
    linspace: n points evenly from 0 to T−1 inclusive — fractional unless (T−1)/(n−1) is whole
    trailing: round(T, T − T/n, …, T/n) − 1, so that the first step is always t = T−1
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Table 2).
    `steps_offset` only applies to "leading", as in diffusers. Euler-type schedulers use these as
    they are; DDPM, DDIM and DPM-Solver round them to integers (`.round()`, half to even).
    """
    if num_steps < 1:
        raise UsageError(f"need at least one sampling step, got {num_steps}")
    if num_steps > num_train_timesteps:
        raise UsageError(f"{num_steps} steps exceed the {num_train_timesteps} training timesteps")
    # numpy, not torch: the same float arithmetic as diffusers, so roundings agree exactly.
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        timesteps = np.arange(num_steps)[::-1] * ratio + steps_offset
    elif spacing == "linspace":
        timesteps = np.linspace(0, num_train_timesteps - 1, num_steps)[::-1]
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        timesteps = np.arange(num_train_timesteps, 0, -ratio).round() - 1
    else:
        raise UsageError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    return torch.from_numpy(timesteps.astype(np.float64).copy())


def _interpolate_sigmas(timesteps: Tensor, sigmas: Tensor) -> Tensor:
    """σ at (possibly fractional) timesteps, linear in σ between training steps (np.interp)."""
    low = timesteps.floor().clamp(0, len(sigmas) - 2).long()
    w = timesteps - low
    return (1 - w) * sigmas[low] + w * sigmas[low + 1]


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: n σ's evenly spaced in σ^(1/ρ) from σ_max to σ_min, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas(
    config: DiffusionConfig,
    num_steps: int,
    *,
    spacing: Spacing = "leading",
    steps_offset: int = 0,
    karras: bool = False,
) -> Tensor:
    """num_steps + 1 descending σ's ending in 0, as diffusers' Euler, Euler ancestral and Heun.

    With `karras`, the Karras σ's span the same range as the spaced ones (diffusers' choice).
    """
    training_sigmas = get_training_sigmas(config)
    timesteps = get_timesteps(num_steps, config.num_train_timesteps, spacing, steps_offset)
    sigmas = _interpolate_sigmas(timesteps, training_sigmas)
    if karras:
        return get_sigmas_karras(num_steps, sigmas[-1].item(), sigmas[0].item())
    return append_zero(sigmas)


@dataclass(frozen=True)
class SchedulerSettings:
    """How to discretise σ at inference; the defaults are Stable Diffusion's own scheduler
    config (SD 1.x and 2.x alike: "leading" timesteps offset by 1 for DDIM/DDPM, no
    `timestep_spacing` key, so Euler/Heun/DPM-Solver take their class default, "linspace").

    A checkpoint without a scheduler config (a single file, say) therefore samples as diffusers
    samples SD, whose `from_single_file` falls back to the same settings.
    `from_diffusers_config` reads a diffusers `scheduler_config.json` so that each sampler then
    equals the diffusers scheduler of the same name built from that file.
    """

    spacing: Spacing | None = None
    """Timestep spacing; None means the default of the diffusers scheduler class behind each
    sampler ("leading" for DDPM/DDIM, "linspace" for Euler, Heun and DPM-Solver), which is what
    diffusers does with a config file that has no `timestep_spacing` key (SD 1.x's, for one)."""
    steps_offset: int = 1
    """Added to "leading" timesteps (SD: 1, so that the last step is t = 1 rather than 0)."""
    karras: bool = False
    """Karras et al. σ spacing (ρ = 7) over the same σ range."""
    set_alpha_to_one: bool = False
    """DDIM's last step goes to ᾱ = 1 (σ = 0) if True, else to ᾱ_0 (σ_0 > 0, SD's choice)."""

    def __post_init__(self) -> None:
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise UsageError(f"unknown timestep spacing {self.spacing!r}; choose one of {SPACINGS}")
        if self.steps_offset < 0:
            raise UsageError(f"steps_offset must be non-negative, got {self.steps_offset}")

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> SchedulerSettings:
        """Settings from a diffusers scheduler config dict, diffusers' defaults for missing keys."""
        return cls(
            spacing=config.get("timestep_spacing"),
            steps_offset=int(config.get("steps_offset", 0)),
            karras=bool(config.get("use_karras_sigmas", False)),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
        )


def default_scheduler_settings(config: DiffusionConfig) -> SchedulerSettings:
    """How a model that ships no scheduler config samples: as SD v1 (`SchedulerSettings()`),
    except that a zero-terminal-SNR model starts at t = T−1 ("trailing", Lin et al. 2024 §3.3):
    with "leading" its first step would be t ≈ T − T/n, a noise level it never starts from."""
    if config.rescale_betas_zero_snr:
        return SchedulerSettings(spacing="trailing", steps_offset=0)
    return SchedulerSettings()


DIFFUSERS_BETA_SCHEDULES = {  # diffusers' name → ours
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "squaredcos_cap_v2": "cosine",
}


def diffusion_config_from_diffusers(config: dict[str, Any]) -> DiffusionConfig:
    """The forward process described by a diffusers scheduler config dict."""
    schedule = config.get("beta_schedule", "linear")
    prediction_type = config.get("prediction_type", "epsilon")
    if config.get("trained_betas") is not None:
        raise UsageError("scheduler config: trained_betas not supported")
    if schedule not in DIFFUSERS_BETA_SCHEDULES:
        raise UsageError(f"scheduler config: unsupported beta_schedule {schedule!r}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UsageError(f"scheduler config: unsupported prediction_type {prediction_type!r}")
    return DiffusionConfig(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_schedule=DIFFUSERS_BETA_SCHEDULES[schedule],  # type: ignore[arg-type]
        beta_start=float(config.get("beta_start", 0.0001)),
        beta_end=float(config.get("beta_end", 0.02)),
        prediction_type=prediction_type,
        rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
    )
