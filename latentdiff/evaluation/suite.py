"""The evaluation prompt suite: 400 canonical prompts covering every scoring category.

    162 single    each of the 18 colour–shape pairs 9 times: once per position phrase (5),
                  and 4 times without one, with 4 different (size, background) choices
     54 counting  each pair with two, three and four objects
    184 two objects, 46 per relation; every third names a held-out pair (cycling through
                  them, named first or second), the others only training pairs

Held-out pairs appear in every kind, in about a quarter of the prompts. Free choices (size,
background, the other object) come from a fixed seed through `random.Random.random`, whose
sequence Python guarantees across versions, so the suite never changes; `suite.txt` beside
this file is its written copy. The order is shuffled, so any prefix is a fair sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from latentdiff.world import palette
from latentdiff.world.captions import canonical_caption
from latentdiff.world.spec import ObjectSpec, PromptSpec

SUITE_SEED = 20240
N_TWO_OBJECT = 184
HELD_OUT_EVERY = 3  # every third two-object prompt names a held-out pair

PAIRS: tuple[tuple[str, str], ...] = tuple(
    (color, shape) for color in palette.OBJECT_COLORS for shape in palette.SHAPES
)
HELD_OUT: tuple[tuple[str, str], ...] = tuple(sorted(palette.HELD_OUT_PAIRS))
TRAINING_PAIRS = tuple(pair for pair in PAIRS if pair not in palette.HELD_OUT_PAIRS)
BACKGROUNDS: tuple[str | None, ...] = (None, *palette.BACKGROUND_COLORS)
SIZES: tuple[str | None, ...] = (None, *palette.SIZES)
UNPOSITIONED_PER_PAIR = 4

T = TypeVar("T")


def evaluation_suite() -> list[str]:
    """The suite's prompts, always the same, in their fixed shuffled order."""
    rng = random.Random(SUITE_SEED)
    specs = [*_single_specs(rng), *_counting_specs(rng), *_two_object_specs(rng)]
    captions = [canonical_caption(spec) for spec in specs]
    keys = [rng.random() for _ in captions]
    return [caption for _, caption in sorted(zip(keys, captions, strict=True))]


def _pick(rng: random.Random, choices: Sequence[T]) -> T:
    return choices[int(rng.random() * len(choices))]


def _single_specs(rng: random.Random) -> list[PromptSpec]:
    options = [(size, background) for size in SIZES for background in BACKGROUNDS]
    specs = []
    for color, shape in PAIRS:
        for position in palette.POSITIONS:
            obj = ObjectSpec(color, shape, _pick(rng, SIZES))
            specs.append(
                PromptSpec("single", (obj,), position=position, background=_pick(rng, BACKGROUNDS))
            )
        keys = [rng.random() for _ in options]
        chosen = [option for _, option in sorted(zip(keys, options, strict=True))]
        for size, background in chosen[:UNPOSITIONED_PER_PAIR]:
            specs.append(
                PromptSpec("single", (ObjectSpec(color, shape, size),), background=background)
            )
    return specs


def _counting_specs(rng: random.Random) -> list[PromptSpec]:
    return [
        PromptSpec(
            "counting", (ObjectSpec(color, shape),), count, background=_pick(rng, BACKGROUNDS)
        )
        for color, shape in PAIRS
        for count in palette.COUNT_WORDS
    ]


def _two_object_specs(rng: random.Random) -> list[PromptSpec]:
    specs: list[PromptSpec] = []
    while len(specs) < N_TWO_OBJECT:
        i = len(specs)
        relation = palette.RELATIONS[i % len(palette.RELATIONS)]
        if i % HELD_OUT_EVERY == 0:
            first = HELD_OUT[(i // HELD_OUT_EVERY) % len(HELD_OUT)]
            second = _pick(rng, [pair for pair in PAIRS if pair != first])
            if rng.random() < 0.5:  # the held-out pair is named first or second
                first, second = second, first
        else:
            first = _pick(rng, TRAINING_PAIRS)
            second = _pick(rng, [pair for pair in TRAINING_PAIRS if pair != first])
        objects = (ObjectSpec(*first), ObjectSpec(*second))
        spec = PromptSpec(
            "two_object", objects, 2, relation=relation, background=_pick(rng, BACKGROUNDS)
        )
        if spec not in specs:  # a repeat is drawn again
            specs.append(spec)
    return specs
