"""Scenes of the Shapes World: what is where, drawn to satisfy a canonical prompt exactly.

All geometry is in reference units (the 64×64 canvas of WORLD.md, y grows downward); the
renderer scales it to any size. An object's `center` is its centre of mass, because that is
what a detector measures (the centroid) and what position and relation thresholds are judged
on. For circles and squares it is the bounding-box centre; for the apex-up equilateral
triangle (width = side, height = side·√3/2) it lies 2/3 of the height below the apex.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from latentdiff.world import palette
from latentdiff.world.captions import canonical_caption, paraphrase
from latentdiff.world.rng import maybe_pick, pick, weighted_pick
from latentdiff.world.spec import ObjectSpec, PromptSpec

BBox = tuple[float, float, float, float]

TRIANGLE_HEIGHT = math.sqrt(3.0) / 2.0  # height of an equilateral triangle of unit width

# Sampled scenes clear every threshold by this much, so that anti-aliasing and centroid
# estimation on the rendered image never flip a position or relation.
THRESHOLD_MARGIN = 1.0

# Share of each prompt kind drawn by `sample_spec`, and of optional phrases within a kind.
KIND_WEIGHTS: dict[str, float] = {"single": 0.5, "counting": 0.2, "two_object": 0.3}
P_POSITION = 0.5
P_SIZE = 0.5
P_BACKGROUND = 0.3
# Four large objects barely fit the canvas, so counting scenes favour small objects.
P_LARGE = 0.5
P_LARGE_IN_COUNT = {2: 0.5, 3: 0.3, 4: 0.15}
PARAPHRASE_FRACTION = 0.3

CANDIDATES = 64  # centre candidates drawn at once per object (vectorised rejection sampling)
MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class SceneObject:
    """One object: `center` (x, y) and `side` (bounding-box width) in reference units."""

    color: str
    shape: str
    size: str
    center: tuple[float, float]
    side: float

    @property
    def bbox(self) -> BBox:
        """(x0, y0, x1, y1) in reference units."""
        left, top, right, bottom = extents(self.shape, self.side)
        cx, cy = self.center
        return (cx - left, cy - top, cx + right, cy + bottom)


@dataclass(frozen=True)
class Scene:
    """A rendered-to-be image: background, objects, and its canonical and shown captions."""

    background: str
    objects: tuple[SceneObject, ...]
    canonical_caption: str = ""
    caption: str = ""


def extents(shape: str, side: float) -> tuple[float, float, float, float]:
    """Distances from the centre of mass to the bbox edges: (left, top, right, bottom)."""
    if shape == "triangle":
        height = side * TRIANGLE_HEIGHT
        return (side / 2, 2 * height / 3, side / 2, height / 3)
    return (side / 2, side / 2, side / 2, side / 2)


@functools.cache
def allowed_pairs(include_held_out: bool) -> tuple[tuple[str, str], ...]:
    """Colour–shape pairs a generator may draw: all, or all but the held-out ones."""
    pairs = [(c, s) for c in palette.OBJECT_COLORS for s in palette.SHAPES]
    return tuple(p for p in pairs if include_held_out or p not in palette.HELD_OUT_PAIRS)


def sample_spec(
    rng: np.random.Generator,
    include_held_out: bool = False,
    kind_weights: Mapping[str, float] = KIND_WEIGHTS,
) -> PromptSpec:
    """Draw a canonical prompt: single (± size, position), counting, or two objects, each
    kind with probability proportional to its weight in `kind_weights`."""
    pairs = allowed_pairs(include_held_out)
    kind = weighted_pick(rng, kind_weights)
    background = maybe_pick(rng, P_BACKGROUND, tuple(palette.BACKGROUND_COLORS))
    if kind == "single":
        color, shape = pick(rng, pairs)
        size = maybe_pick(rng, P_SIZE, palette.SIZES)
        position = maybe_pick(rng, P_POSITION, palette.POSITIONS)
        return PromptSpec(
            "single", (ObjectSpec(color, shape, size),), 1, position, None, background
        )
    if kind == "counting":
        color, shape = pick(rng, pairs)
        count = int(rng.integers(2, 5))
        return PromptSpec("counting", (ObjectSpec(color, shape),), count, background=background)
    first, second = rng.integers(len(pairs)), rng.integers(len(pairs) - 1)
    second += second >= first  # two distinct pairs, uniformly
    relation = pick(rng, palette.RELATIONS)
    objects = (ObjectSpec(*pairs[first]), ObjectSpec(*pairs[second]))
    return PromptSpec("two_object", objects, 2, relation=relation, background=background)


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """Draw a scene that satisfies `spec` exactly (WORLD.md): sizes, gaps, canvas, positions."""
    background = spec.background or pick(rng, tuple(palette.BACKGROUND_COLORS))
    for attempt in range(MAX_ATTEMPTS):
        sides = _sample_sides(spec, rng, force_small=attempt >= MAX_ATTEMPTS // 2)
        objects = _place(spec, sides, rng)
        if objects is not None:
            caption = canonical_caption(spec)
            return Scene(background, objects, caption, caption)
    raise RuntimeError(f"could not place a scene for {spec}")  # unreachable: small always fit


def _object_specs(spec: PromptSpec) -> tuple[ObjectSpec, ...]:
    return spec.objects * spec.count if spec.kind == "counting" else spec.objects


def _sample_sides(
    spec: PromptSpec, rng: np.random.Generator, force_small: bool
) -> list[tuple[str, float]]:
    """(size word, jittered side) per object; a free size is drawn, small after many failures."""
    p_large = P_LARGE_IN_COUNT.get(spec.count, P_LARGE) if spec.kind == "counting" else P_LARGE
    sized = []
    for obj in _object_specs(spec):
        size = obj.size or ("small" if force_small or rng.random() >= p_large else "large")
        sized.append((size, jittered_side(size, rng)))
    return sized


def jittered_side(size: str, rng: np.random.Generator) -> float:
    """A bounding-box side for a size word: the nominal side ± SIZE_JITTER, uniformly."""
    return palette.SIZE_SIDE[size] * (1.0 + rng.uniform(-palette.SIZE_JITTER, palette.SIZE_JITTER))


def _place(
    spec: PromptSpec, sides: list[tuple[str, float]], rng: np.random.Generator
) -> tuple[SceneObject, ...] | None:
    """Place objects one by one in their allowed regions; None when one does not fit."""
    placed: list[SceneObject] = []
    for obj, (size, side) in zip(_object_specs(spec), sides, strict=True):
        ext = extents(obj.shape, side)
        region = _region(spec, ext, placed)
        if region is None:
            return None
        center = _sample_center(region, ext, [p.bbox for p in placed], rng)
        if center is None:
            return None
        placed.append(SceneObject(obj.color, obj.shape, size, center, side))
    return tuple(placed)


def _region(
    spec: PromptSpec, ext: tuple[float, float, float, float], placed: list[SceneObject]
) -> BBox | None:
    """Allowed centres (x0, y0, x1, y1) for the next object: canvas ∩ position/relation."""
    left, top, right, bottom = ext
    x0, y0 = left, top
    x1, y1 = palette.REFERENCE_SIZE - right, palette.REFERENCE_SIZE - bottom
    m = THRESHOLD_MARGIN
    if spec.position is not None:
        c, r = palette.REFERENCE_SIZE / 2, palette.POSITION_CENTER_RADIUS - m
        bounds = {
            "on the left": (x0, y0, palette.POSITION_LEFT_MAX - m, y1),
            "on the right": (palette.POSITION_RIGHT_MIN + m, y0, x1, y1),
            "at the top": (x0, y0, x1, palette.POSITION_TOP_MAX - m),
            "at the bottom": (x0, palette.POSITION_BOTTOM_MIN + m, x1, y1),
            "in the center": (c - r, c - r, c + r, c + r),
        }[spec.position]
        x0, y0, x1, y1 = (
            max(x0, bounds[0]),
            max(y0, bounds[1]),
            min(x1, bounds[2]),
            min(y1, bounds[3]),
        )
    if spec.relation is not None and placed:
        # The relation is stated about the first object relative to the second (this one).
        fx, fy = placed[0].center
        offset = palette.RELATION_MIN_OFFSET + m
        if spec.relation == "to the left of":
            x0 = max(x0, fx + offset)
        elif spec.relation == "to the right of":
            x1 = min(x1, fx - offset)
        elif spec.relation == "above":
            y0 = max(y0, fy + offset)
        else:  # below
            y1 = min(y1, fy - offset)
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def _sample_center(
    region: BBox,
    ext: tuple[float, float, float, float],
    others: list[BBox],
    rng: np.random.Generator,
) -> tuple[float, float] | None:
    """A uniform centre in `region` whose bbox keeps MIN_GAP from every other bbox."""
    x0, y0, x1, y1 = region
    if not others:
        return (rng.uniform(x0, x1), rng.uniform(y0, y1))
    xs = rng.uniform(x0, x1, CANDIDATES)
    ys = rng.uniform(y0, y1, CANDIDATES)
    ok = np.ones(CANDIDATES, dtype=bool)
    left, top, right, bottom = ext
    gap = palette.MIN_GAP
    for ox0, oy0, ox1, oy1 in others:
        ok &= (
            (xs - left >= ox1 + gap)
            | (xs + right <= ox0 - gap)
            | (ys - top >= oy1 + gap)
            | (ys + bottom <= oy0 - gap)
        )
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    return (float(xs[hits[0]]), float(ys[hits[0]]))


def sample_scenes(
    n: int,
    seed: int,
    include_held_out: bool = False,
    *,
    paraphrase_fraction: float = PARAPHRASE_FRACTION,
    kind_weights: Mapping[str, float] = KIND_WEIGHTS,
) -> list[Scene]:
    """`n` scenes, deterministic from `seed`; a fraction carries a paraphrased `caption`.

    Scenes are drawn in sequence from one stream, so the first k of n scenes equal
    `sample_scenes(k, seed)`.
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        spec = sample_spec(rng, include_held_out, kind_weights)
        scene = sample_scene(spec, rng)
        if rng.random() < paraphrase_fraction:
            scene = replace(scene, caption=paraphrase(spec, rng))
        scenes.append(scene)
    return scenes
