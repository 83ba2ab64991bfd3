"""One generation request: the parameters the Python API, the CLI and the server all share."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TypeVar

from latentdiff.config import SamplingConfig, valid_interval
from latentdiff.errors import UsageError

T = TypeVar("T")

SCHEDULES = ("default", "karras")
MAX_SEED = 2**64 - 1
"""The largest seed a torch.Generator takes."""


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Names follow diffusers (`num_inference_steps`, `guidance_scale`)."""

    prompt: str | list[str]
    """One prompt, or one per image group (each gets `num_images` images)."""
    negative_prompt: str | list[str] | None = None
    """Steers away from this text; None means the empty prompt (the unconditional model)."""
    num_inference_steps: int = 20
    guidance_scale: float | None = None
    """None: the model's default (`ModelConfig.sampling`; 5 unless the model says otherwise)."""
    guidance_rescale: float | None = None
    """φ of Lin et al.'s guidance rescaling (0 = plain CFG; they use 0.7 at zero terminal SNR);
    None: the model's default."""
    guidance_interval: tuple[float, float] | None = None
    """(σ_lo, σ_hi]: guide only at these noise levels (Kynkäänniemi et al. 2024); None: the
    model's default, which is every step unless the model says otherwise; (0, inf): every step."""
    sampler: str = "dpmpp_2m"
    schedule: str = "default"
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    """Images per prompt; image k of the whole batch uses seed `seed + k`."""

    def with_defaults(self, sampling: SamplingConfig) -> GenerationRequest:
        """This request with the model's sampling defaults wherever it leaves a value unset."""
        return replace(
            self,
            guidance_scale=pick(self.guidance_scale, sampling.guidance_scale),
            guidance_rescale=pick(self.guidance_rescale, sampling.guidance_rescale),
            guidance_interval=pick(self.guidance_interval, sampling.interval),
        )

    @property
    def prompts(self) -> list[str]:
        """One prompt per image, in output order."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        return [p for p in prompts for _ in range(self.num_images)]

    @property
    def negative_prompts(self) -> list[str]:
        negative = self.negative_prompt or ""
        if isinstance(negative, str):
            return [negative] * len(self.prompts)
        if len(negative) * self.num_images != len(self.prompts):
            raise UsageError("give one negative prompt, or one per prompt")
        return [n for n in negative for _ in range(self.num_images)]

    def validate(self, size_multiple: int, samplers: tuple[str, ...]) -> None:
        """Raise UsageError, naming the parameter, for any value the pipeline cannot honour."""
        if self.num_inference_steps < 1:
            raise UsageError(f"steps must be at least 1, got {self.num_inference_steps}")
        # An unset (None) guidance value is the model's default, checked with the model's config.
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise UsageError(f"guidance scale must be a finite number, got {self.guidance_scale}")
        if self.guidance_rescale is not None and not 0 <= self.guidance_rescale <= 1:
            raise UsageError(f"guidance rescale must be in [0, 1], got {self.guidance_rescale}")
        if self.guidance_interval is not None:
            low, high = self.guidance_interval
            if not all(isinstance(v, int | float) for v in (low, high)):
                raise UsageError(
                    f"guidance interval bounds must be numbers (inf for an open top), got "
                    f"{self.guidance_interval}"
                )
            if not valid_interval(low, high):
                raise UsageError(
                    f"guidance interval (LO, HI] needs 0 ≤ LO < HI and a finite LO, "
                    f"got LO={low:g} HI={high:g}"
                )
        if self.sampler not in samplers:
            raise UsageError(
                f"unknown sampler {self.sampler!r}; choose one of {', '.join(samplers)}"
            )
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.num_images < 1:
            raise UsageError(f"num_images must be at least 1, got {self.num_images}")
        if not self.prompts:
            raise UsageError("give at least one prompt")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - len(self.prompts) + 1:
            raise UsageError(
                f"seed must be between 0 and {MAX_SEED} (image k uses seed + k), got {self.seed}"
            )
        for name, side in (("height", self.height), ("width", self.width)):
            if side is not None and side <= 0:
                # Its own message: before the model loads, size_multiple is still 1.
                raise UsageError(f"{name} must be positive, got {side}")
            if side is not None and side % size_multiple:
                raise UsageError(
                    f"{name} must be a positive multiple of {size_multiple} (the autoencoder's "
                    f"and the U-Net's downsampling together), got {side}"
                )


def pick(value: T | None, default: T) -> T:
    """`value`, or `default` where it is None (unset)."""
    return default if value is None else value
