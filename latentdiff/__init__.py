"""latentdiff: Stable Diffusion in readable Python."""

from __future__ import annotations

__version__ = "0.1.0"


def load_pipeline(name_or_path: str = "shapes", device: str = "auto", **options):
    """Load a text-to-image pipeline: the bundled model by default, or a checkpoint path
    (latentdiff or diffusers folder, SD single file; options as `LoadOptions`)."""
    from latentdiff.pipelines.pipeline import load_pipeline as _load

    return _load(name_or_path, device=device, **options)
