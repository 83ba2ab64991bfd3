"""The Shapes World's vocabulary and constants, exactly as WORLD.md states them."""

from __future__ import annotations

RGB = tuple[int, int, int]

OBJECT_COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 70, 200),
    "orange": (245, 140, 30),
}
BACKGROUND_COLORS: dict[str, RGB] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")

# Bounding-box side in pixels at the reference canvas size; each object jitters by ±15 %.
REFERENCE_SIZE = 64
SIZE_SIDE: dict[str, float] = {"small": 12.0, "large": 24.0}
SIZE_JITTER = 0.15
MIN_GAP = 2.0  # pixels between bounding boxes, at the reference size

# Colour–shape pairs that never appear in any training image or caption.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square")}
)

POSITIONS: tuple[str, ...] = (
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the center",
)
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
MOTION_DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

# Position and relation thresholds, in reference-size pixels (object centres, y grows downward).
POSITION_LEFT_MAX = 24.0
POSITION_RIGHT_MIN = 40.0
POSITION_TOP_MAX = 24.0
POSITION_BOTTOM_MIN = 40.0
POSITION_CENTER_RADIUS = 8.0
RELATION_MIN_OFFSET = 12.0


def is_held_out(color: str, shape: str) -> bool:
    return (color, shape) in HELD_OUT_PAIRS
