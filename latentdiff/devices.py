"""Device names the user may give (`--device`, `device=`) → a checked `torch.device`."""

from __future__ import annotations

import torch

from latentdiff.errors import UsageError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """ "auto" → CUDA if available, else CPU; "cpu", "cuda", "cuda:N" are checked to exist.

    Checking here turns a typo or a missing GPU into a one-line UsageError before any model is
    built, instead of a RuntimeError deep inside the first `.to(device)`.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r} (use {DEVICE_HELP})") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"unsupported device {name!r} (use {DEVICE_HELP})")
    if not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The dtypes a model may run in or be written as, by their short names (`--dtype`)."""


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """ "fp32", "fp16", "bf16" (or the torch dtype itself) → a checked floating torch dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise UsageError(f"unsupported dtype {name} (use one of {', '.join(DTYPES)})")
        return name
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[name]
