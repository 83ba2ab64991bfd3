"""The Shapes World object detector of WORLD.md's "Scoring" section.

Every pixel takes the nearest palette colour (object and background colours) when it lies
within RGB distance 60 of it. Connected pixels of one object colour form a component;
components of at least 12 px (at 64×64, scaled with the image area) are objects. Shape comes
from two geometric measures of the component: the share of its mass in the top half of its
bounding box (an apex-up triangle 1/4, a circle or square 1/2) and the fill ratio of the box
(square 1.0, circle π/4, triangle 1/2). Size comes from the longer bounding-box side.

Components are labelled run by run: each image row is cut into runs of one colour, runs that
touch a run of the same colour in the next row are joined (a vectorised union-find), and
per-object statistics are sums over runs, so that all work after the per-pixel colour lookup
grows with the number of runs, not of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentdiff.world import palette

MAX_COLOR_DISTANCE = 60
MIN_AREA_REFERENCE = 12.0  # pixels at the 64×64 reference size
# Bounding-box side (reference units) that splits small (12 ± 15 %) from large (24 ± 15 %).
# Anti-aliased edge pixels fall outside the colour radius, so measured boxes run ~1 px under
# the drawn side: at 64 px small objects measure at most 14, large ones at least 19.
SIZE_THRESHOLD = 17.0

# Image side (pixels, the smaller of width and height) the detector needs. Its overall accuracy
# on freshly rendered ground truth (WORLD.md asks for ≥ 99.5 %): 16 px 0.585, 24 px 0.804,
# 32 px 0.966, 40 px 0.998 (counting only 0.995), 48–56 px ≥ 0.998, 64 px and up 1.000.
# `latentdiff evaluate` refuses images below MIN_IMAGE_SIZE and warns below RELIABLE_IMAGE_SIZE.
MIN_IMAGE_SIZE = 40
RELIABLE_IMAGE_SIZE = 48

OBJECT_NAMES: tuple[str, ...] = tuple(palette.OBJECT_COLORS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(palette.BACKGROUND_COLORS)
PALETTE = np.array(
    [*palette.OBJECT_COLORS.values(), *palette.BACKGROUND_COLORS.values()], dtype=np.int32
)  # (9, 3): object colours first, so label < len(OBJECT_NAMES) means "object colour"
NO_COLOR = -1

# Shape thresholds on the two measures. An apex-up triangle has 1/4 of its mass in the top
# half of its box, a circle or square 1/2. A square fills its box (1.0), a circle π/4; but
# dropping the faint anti-aliased edge rows shrinks a small circle's box more than its area,
# so measured circle fills reach 0.90 at 64 px (0.94 at 48 px) while squares stay ≥ 0.97.
TRIANGLE_MAX_TOP = 0.375
SQUARE_MIN_FILL = 0.935


@dataclass(frozen=True)
class DetectedObject:
    """One detected object.

    `center` is the centroid in reference units (the 64×64 canvas, y down), the unit every
    position threshold is written in; `center_px` the same point in image pixels. `bbox` is
    (x0, y0, x1, y1) in pixels, end-exclusive; `area` counts pixels.
    """

    color: str
    shape: str
    size: str
    center: tuple[float, float]
    center_px: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class Detection:
    """What the detector sees: the background colour (None if no pixel is near one) and objects."""

    background: str | None
    objects: tuple[DetectedObject, ...]


def detect(image: np.ndarray) -> Detection:
    """Detect the background and the objects of an (H, W, 3) uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    labels = nearest_palette_labels(image)
    return Detection(_background(labels), _objects(labels))


def nearest_palette_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int8: index into PALETTE of each pixel's nearest colour, or NO_COLOR if > 60 away.

    One pass per palette colour with a running minimum, in exact integer arithmetic; ties go
    to the earlier palette colour.
    """
    red, green, blue = np.moveaxis(image.astype(np.int32), -1, 0)
    best = np.full(image.shape[:2], MAX_COLOR_DISTANCE**2 + 1, dtype=np.int32)
    labels = np.full(image.shape[:2], NO_COLOR, dtype=np.int8)
    for k, (r, g, b) in enumerate(PALETTE.tolist()):
        distance = (red - r) ** 2 + (green - g) ** 2 + (blue - b) ** 2
        closer = distance < best
        best[closer] = distance[closer]
        labels[closer] = k
    return labels


def _background(labels: np.ndarray) -> str | None:
    first = len(OBJECT_NAMES)
    counts = np.bincount(labels[labels >= first] - first, minlength=len(BACKGROUND_NAMES))
    return BACKGROUND_NAMES[int(counts.argmax())] if counts.any() else None


def _objects(labels: np.ndarray) -> tuple[DetectedObject, ...]:
    height, width = labels.shape
    runs = _object_runs(labels)
    stats = _component_stats(runs, _join_runs(runs))
    scale = (height / palette.REFERENCE_SIZE) * (width / palette.REFERENCE_SIZE)
    keep = np.flatnonzero(stats["area"] >= MIN_AREA_REFERENCE * scale)
    return tuple(_describe(stats, k, width, height) for k in keep)


@dataclass(frozen=True)
class _Runs:
    """Maximal horizontal runs of one object colour (row, [x0, x1), colour label), and the
    pairs of runs in adjacent rows that touch (4-connectivity)."""

    row: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    label: np.ndarray
    touching: np.ndarray  # (E, 2) run numbers, the upper run first


def _object_runs(labels: np.ndarray) -> _Runs:
    height, width = labels.shape
    colors = np.where(labels < len(OBJECT_NAMES), labels, NO_COLOR)  # backgrounds are no object
    starts = np.ones_like(colors, dtype=bool)
    starts[:, 1:] = colors[:, 1:] != colors[:, :-1]
    rows, x0 = np.nonzero(starts)
    x1 = np.append(x0[1:], width)
    x1[np.append(rows[1:] != rows[:-1], True)] = width  # a row's last run ends at the edge
    run_labels = colors[rows, x0]
    keep = run_labels != NO_COLOR
    # Run number of every pixel, counting object runs only (other pixels are never read).
    index = (np.cumsum(keep)[np.cumsum(starts.ravel()) - 1] - 1).reshape(height, width)
    # Vertically adjacent pixels of one object colour join their runs. Each touching pair of
    # runs overlaps on one interval of columns; only its first column (where a run starts in
    # one of the two rows) is kept, so every pair appears once.
    same = (colors[1:] == colors[:-1]) & (colors[1:] != NO_COLOR)
    first = same & (starts[1:] | starts[:-1])
    touching = np.stack([index[:-1][first], index[1:][first]], axis=1)
    return _Runs(rows[keep], x0[keep], x1[keep], run_labels[keep], touching)


def _join_runs(runs: _Runs) -> np.ndarray:
    """Component number (0..n-1, in raster order of first pixel) of every run.

    Vectorised hook-and-compress (Shiloach–Vishkin style): every touching pair of runs with
    different roots hooks the larger root under the smaller, then pointer jumping flattens the
    trees, until touching runs share roots. A root is the first run of its component in
    raster order. 4-connected: on rendered ground truth 4- and 8-connectivity score the same
    (measured at 32 to 256 px; objects keep a 2 px gap), and 4-connectivity is faster and
    never lets one diagonal noise pixel merge two objects.
    """
    parent = np.arange(len(runs.row))
    upper, lower = runs.touching.T
    while True:
        root_upper, root_lower = parent[upper], parent[lower]
        differ = root_upper != root_lower
        if not differ.any():
            return np.unique(parent, return_inverse=True)[1].reshape(-1)
        high = np.maximum(root_upper, root_lower)[differ]
        np.minimum.at(parent, high, np.minimum(root_upper, root_lower)[differ])
        while not np.array_equal(grandparent := parent[parent], parent):
            parent = grandparent


def _component_stats(runs: _Runs, component: np.ndarray) -> dict[str, np.ndarray]:
    """Per component: area, centroid sums, bounding box, colour and top-half mass, from runs."""
    n = int(component.max()) + 1 if len(component) else 0
    length = (runs.x1 - runs.x0).astype(np.float64)
    x_mid = (runs.x0 + runs.x1) / 2.0  # pixel i is centred at i + 0.5: a run averages to this
    stats = {
        "area": np.bincount(component, length, n),
        "sum_x": np.bincount(component, length * x_mid, n),
        "sum_y": np.bincount(component, length * (runs.row + 0.5), n),
        "x0": _reduce(np.minimum, component, runs.x0, n, np.iinfo(np.int64).max),
        "y0": _reduce(np.minimum, component, runs.row, n, np.iinfo(np.int64).max),
        "x1": _reduce(np.maximum, component, runs.x1, n, -1),
        "y1": _reduce(np.maximum, component, runs.row + 1, n, -1),
        "label": np.zeros(n, dtype=np.int64),
    }
    stats["label"][component] = runs.label
    # Mass in the top half [y0, y0 + h/2) of the box: row r covers [r, r + 1).
    half = (stats["y0"] + stats["y1"]) / 2.0
    in_top = np.clip(half[component] - runs.row, 0.0, 1.0)
    stats["top"] = np.bincount(component, length * in_top, n)
    return stats


def _reduce(
    ufunc: np.ufunc, groups: np.ndarray, values: np.ndarray, n: int, init: int
) -> np.ndarray:
    out = np.full(n, init, dtype=np.int64)
    ufunc.at(out, groups, values)
    return out


def _describe(stats: dict[str, np.ndarray], k: int, width: int, height: int) -> DetectedObject:
    area = float(stats["area"][k])
    x0, y0, x1, y1 = (int(stats[key][k]) for key in ("x0", "y0", "x1", "y1"))
    fill = area / ((x1 - x0) * (y1 - y0))
    top = float(stats["top"][k]) / area
    cx, cy = stats["sum_x"][k] / area, stats["sum_y"][k] / area
    scale_x, scale_y = palette.REFERENCE_SIZE / width, palette.REFERENCE_SIZE / height
    side = max((x1 - x0) * scale_x, (y1 - y0) * scale_y)
    return DetectedObject(
        color=OBJECT_NAMES[int(stats["label"][k])],
        shape=classify_shape(fill, top),
        size="large" if side > SIZE_THRESHOLD else "small",
        center=(float(cx * scale_x), float(cy * scale_y)),
        center_px=(float(cx), float(cy)),
        bbox=(x0, y0, x1, y1),
        area=int(area),
    )


def classify_shape(fill: float, top: float) -> str:
    """Shape from the box fill ratio and the share of mass in the top half of the box."""
    if top < TRIANGLE_MAX_TOP:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"
