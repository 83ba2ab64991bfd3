"""Rendering Shapes World scenes to pixels, at any size, anti-aliased.

Shapes are drawn with PIL at 4× the target size, then every 4×4 block is averaged (a box
filter), as WORLD.md prescribes: object interiors keep their exact palette colour and only
edge pixels take intermediate values. Geometry scales linearly from the 64-px reference
canvas. The triangle is equilateral and apex-up, `side` wide and side·√3/2 tall, so it fills
half of its bounding box and has a quarter of its area in the top half of the box.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from latentdiff.world import palette
from latentdiff.world.scenes import KIND_WEIGHTS, BBox, Scene, SceneObject, sample_scenes

SUPERSAMPLE = 4


def object_bbox(obj: SceneObject, size: int) -> BBox:
    """(x0, y0, x1, y1) of the object in pixels of a `size`×`size` rendering."""
    scale = size / palette.REFERENCE_SIZE
    x0, y0, x1, y1 = obj.bbox
    return (x0 * scale, y0 * scale, x1 * scale, y1 * scale)


def object_center(obj: SceneObject, size: int) -> tuple[float, float]:
    """Centre of mass (x, y) in pixels of a `size`×`size` rendering."""
    scale = size / palette.REFERENCE_SIZE
    return (obj.center[0] * scale, obj.center[1] * scale)


def render_scene(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 RGB array."""
    return np.asarray(render_scene_image(scene, size))


def render_scene_image(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a PIL image (what `render_scene` converts to an array)."""
    canvas = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), _background(scene))
    draw = ImageDraw.Draw(canvas)
    scale = size * SUPERSAMPLE / palette.REFERENCE_SIZE
    for obj in scene.objects:
        _draw_object(draw, obj, scale)
    return canvas.reduce(SUPERSAMPLE)


def _background(scene: Scene) -> tuple[int, int, int]:
    return palette.BACKGROUND_COLORS[scene.background]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: float) -> None:
    """Fill the pixels whose centres lie inside the shape (PIL's pixel centres are integers)."""
    color = palette.OBJECT_COLORS[obj.color]
    x0, y0, x1, y1 = (v * scale for v in obj.bbox)
    if obj.shape == "triangle":
        apex = (obj.center[0] * scale - 0.5, y0 - 0.5)
        draw.polygon([(x0 - 0.5, y1 - 0.5), (x1 - 0.5, y1 - 0.5), apex], fill=color)
        return
    # Pixel i covers [i, i + 1): the covered pixels run from round(x0) to round(x1) - 1.
    left, top = round(x0), round(y0)
    box = (left, top, max(left, round(x1) - 1), max(top, round(y1) - 1))
    if obj.shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.ellipse(box, fill=color)


def render_batch(
    n: int,
    size: int,
    seed: int,
    include_held_out: bool = False,
    *,
    kind_weights: Mapping[str, float] = KIND_WEIGHTS,
) -> tuple[np.ndarray, list[Scene]]:
    """`n` fresh scenes from `seed` (prompt kinds drawn by `kind_weights`) and their
    renderings, a (n, size, size, 3) uint8 array."""
    scenes = sample_scenes(n, seed, include_held_out, kind_weights=kind_weights)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render_scene_image(scene, size)
    return images, scenes


def object_record(obj: SceneObject, size: int) -> dict:
    """An object's ground truth in pixels of a `size` rendering, as manifests store it."""
    return {
        "color": obj.color,
        "shape": obj.shape,
        "size": obj.size,
        "center": [round(v, 2) for v in object_center(obj, size)],
        "bbox": [round(v, 2) for v in object_bbox(obj, size)],
    }


def scene_record(scene: Scene, size: int) -> dict:
    """A scene's captions, background and objects, as one manifest line stores them."""
    return {
        "caption": scene.caption,
        "canonical_caption": scene.canonical_caption,
        "background": scene.background,
        "objects": [object_record(obj, size) for obj in scene.objects],
    }
