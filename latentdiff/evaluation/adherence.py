"""Prompt adherence of a model: generate one image per suite prompt, then score them.

Image k is generated with seed `seed + k` (the pipeline's rule), so a run is reproducible and
any prefix of the suite, itself shuffled, is a fair sample of the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from latentdiff.evaluation.scoring import Report, score
from latentdiff.pipelines.pipeline import Pipeline
from latentdiff.pipelines.request import GenerationRequest


def generate_for_prompts(
    pipeline: Pipeline,
    prompts: Sequence[str],
    request: GenerationRequest,
    *,
    batch_size: int = 50,
    on_batch: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """One (H, W, 3) uint8 image per prompt; `request` gives every other parameter."""
    request = replace(request, prompt=list(prompts), num_images=1, seed=request.seed or 0)
    images: list[np.ndarray] = []
    for _, batch, _ in pipeline.generate_batched(request, batch_size):
        images.extend(np.asarray(image) for image in batch)
        if on_batch is not None:
            on_batch(len(batch))
    return images


def evaluate_adherence(
    pipeline: Pipeline,
    prompts: Sequence[str],
    request: GenerationRequest,
    *,
    batch_size: int = 50,
    on_batch: Callable[[int], None] | None = None,
) -> Report:
    """Generate for `prompts` and score the images (WORLD.md's six categories)."""
    images = generate_for_prompts(
        pipeline, prompts, request, batch_size=batch_size, on_batch=on_batch
    )
    return score(prompts, images)
