"""What a canonical caption asks for: the contract between captions, rendering and scoring.

`latentdiff.world.captions.parse_caption` turns a caption into a `PromptSpec`; the scene
sampler draws scenes that satisfy one; the evaluator checks detections against one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latentdiff.world.palette import HELD_OUT_PAIRS

PromptKind = Literal["single", "counting", "two_object"]


@dataclass(frozen=True)
class ObjectSpec:
    """One named object: colour and shape always, size only when the caption says it."""

    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """The constraints of one canonical caption.

    kind="single": one object, optional `position` (one of palette.POSITIONS).
    kind="counting": `count` (2–4) identical objects `objects[0]`.
    kind="two_object": `objects[0]` `relation` `objects[1]` (relation one of palette.RELATIONS).
    `background` is None when the caption leaves it free.
    `motion` (one of palette.MOTION_DIRECTIONS) makes a single-object caption a video caption,
    `a {color} {shape} moving {direction}`.
    """

    kind: PromptKind
    objects: tuple[ObjectSpec, ...]
    count: int = 1
    position: str | None = None
    relation: str | None = None
    background: str | None = None
    motion: str | None = None

    @property
    def held_out(self) -> bool:
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in self.objects)
