"""latentdiff: Stable Diffusion in readable Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays unimported until a pipeline is loaded
    import torch

    from latentdiff.pipelines.pipeline import Pipeline

__version__ = "0.1.0"


def load_pipeline(
    name_or_path: str = "shapes",
    device: str = "auto",
    torch_dtype: torch.dtype | str = "fp32",
    **options: Any,
) -> Pipeline:
    """Load a text-to-image pipeline: the bundled model by default, or a checkpoint path
    (latentdiff or diffusers folder, SD single file). `torch_dtype` (torch.float16 or "fp16",
    "bf16", "fp32") is what the modules compute in; `options` are `LoadOptions` fields."""
    from latentdiff.pipelines.pipeline import load_pipeline as _load

    return _load(name_or_path, device=device, torch_dtype=torch_dtype, **options)
