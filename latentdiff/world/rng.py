"""Scalar draws from a NumPy Generator, written once for the whole world.

`rng.choice` is slow for single draws and returns NumPy strings; indexing a tuple with
`rng.integers` is fast and keeps plain `str`, which dataclass equality and JSON rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def pick(rng: np.random.Generator, choices: Sequence[T]) -> T:
    """One of `choices`, uniformly."""
    return choices[rng.integers(len(choices))]


def maybe_pick(rng: np.random.Generator, p: float, choices: Sequence[T]) -> T | None:
    """With probability `p` one of `choices`, else None (an optional phrase left out)."""
    return pick(rng, choices) if rng.random() < p else None


def weighted_pick(rng: np.random.Generator, weights: Mapping[T, float]) -> T:
    """A key drawn with probability proportional to its weight."""
    u = rng.random() * sum(weights.values())
    for key, weight in weights.items():
        u -= weight
        if u < 0:
            return key
    return key  # rounding left u at 0: the last key


def as_generator(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    """Accept a Generator to continue a stream, or a seed to start one."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)
