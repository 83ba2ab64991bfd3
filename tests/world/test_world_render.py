import math

import numpy as np
import pytest

from latentdiff.world import palette
from latentdiff.world.render import object_bbox, object_center, render_batch, render_scene
from latentdiff.world.scenes import Scene, SceneObject, sample_scenes


def _sdf(obj: SceneObject, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) from pixel centres to the object's outline."""
    cx, cy = obj.center[0] * scale, obj.center[1] * scale
    half = obj.side * scale / 2
    if obj.shape == "circle":
        return np.hypot(x - cx, y - cy) - half
    if obj.shape == "square":
        return np.maximum(abs(x - cx) - half, abs(y - cy) - half)
    x0, y0, x1, y1 = (v * scale for v in obj.bbox)
    # Apex-up triangle: base edge plus two slanted edges at ±60°.
    base = y - y1
    s, c = math.sin(math.pi / 3), math.cos(math.pi / 3)
    left = -(x - x0) * s - (y - y1) * c
    right = (x - x1) * s - (y - y1) * c
    return np.maximum(base, np.maximum(left, right))


def _check_antialiasing(scene: Scene, size: int) -> None:
    """Exact colours away from outlines; intermediate colours only within a pixel of one."""
    image = render_scene(scene, size).astype(int)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    scale = size / palette.REFERENCE_SIZE
    near_edge = np.zeros((size, size), dtype=bool)
    outside_all = np.ones((size, size), dtype=bool)
    for obj in scene.objects:
        d = _sdf(obj, x, y, scale)
        inside = d < -1.0
        assert (image[inside] == palette.OBJECT_COLORS[obj.color]).all()
        near_edge |= abs(d) <= 1.0
        outside_all &= d > 1.0
    assert (image[outside_all] == palette.BACKGROUND_COLORS[scene.background]).all()
    exact = {palette.BACKGROUND_COLORS[scene.background]}
    exact |= {palette.OBJECT_COLORS[obj.color] for obj in scene.objects}
    is_exact = np.zeros((size, size), dtype=bool)
    for color in exact:
        is_exact |= (image == color).all(axis=-1)
    assert near_edge[~is_exact].all()
    assert (~is_exact).any()  # anti-aliasing does produce intermediate values


@pytest.mark.parametrize("size", [64, 37, 256])
def test_exact_palette_colours_with_antialiased_edges_at_any_size(size):
    for scene in sample_scenes(20, seed=size):
        _check_antialiasing(scene, size)


def _coverage(obj: SceneObject, background: str, size: int) -> np.ndarray:
    """Per-pixel fraction covered by the object, from the blend of its colour and the background."""
    image = render_scene(Scene(background, (obj,)), size).astype(float)
    bg = np.array(palette.BACKGROUND_COLORS[background], dtype=float)
    fg = np.array(palette.OBJECT_COLORS[obj.color], dtype=float)
    channel = int(np.argmax(abs(fg - bg)))
    return (image[..., channel] - bg[channel]) / (fg[channel] - bg[channel])


@pytest.mark.parametrize(
    ("shape", "fill_ratio", "top_half"),
    [("square", 1.0, 0.5), ("circle", math.pi / 4, 0.5), ("triangle", 0.5, 0.25)],
)
def test_shape_geometry_matches_what_the_detector_expects(shape, fill_ratio, top_half):
    size = 256
    obj = SceneObject("green", shape, "large", (30.3, 33.7), 24.6)
    coverage = _coverage(obj, "black", size)
    x0, y0, x1, y1 = object_bbox(obj, size)
    area = coverage.sum()
    assert area / ((x1 - x0) * (y1 - y0)) == pytest.approx(fill_ratio, rel=0.02)
    top = coverage[: int(round((y0 + y1) / 2))].sum()
    assert top / area == pytest.approx(top_half, abs=0.01)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    centroid = ((coverage * x).sum() / area, (coverage * y).sum() / area)
    np.testing.assert_allclose(centroid, object_center(obj, size), atol=0.3)
    rows, cols = np.nonzero(coverage > 0.5)
    np.testing.assert_allclose(
        (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), (x0, y0, x1, y1), atol=1.0
    )


def test_triangle_is_equilateral_and_as_wide_as_its_side():
    obj = SceneObject("red", "triangle", "large", (32.0, 32.0), 24.0)
    x0, y0, x1, y1 = obj.bbox
    assert x1 - x0 == pytest.approx(24.0)
    assert y1 - y0 == pytest.approx(24.0 * math.sqrt(3) / 2)
    assert (y1 - 32.0) == pytest.approx((y1 - y0) / 3)  # centroid a third above the base


def test_pixel_geometry_scales_linearly_with_size():
    obj = SceneObject("blue", "square", "small", (10.0, 50.0), 12.0)
    assert object_bbox(obj, 64) == (4.0, 44.0, 16.0, 56.0)
    assert object_bbox(obj, 128) == (8.0, 88.0, 32.0, 112.0)
    assert object_center(obj, 256) == (40.0, 200.0)


def test_render_batch_is_deterministic_and_matches_render_scene():
    images, scenes = render_batch(12, 48, seed=5)
    assert images.shape == (12, 48, 48, 3) and images.dtype == np.uint8
    assert scenes == sample_scenes(12, seed=5)
    for image, scene in zip(images, scenes, strict=True):
        np.testing.assert_array_equal(image, render_scene(scene, 48))
    again, _ = render_batch(12, 48, seed=5)
    np.testing.assert_array_equal(images, again)
    other, _ = render_batch(12, 48, seed=6)
    assert not np.array_equal(images, other)


def test_render_batch_held_out_flag():
    _, scenes = render_batch(400, 16, seed=0, include_held_out=True)
    pairs = {(o.color, o.shape) for s in scenes for o in s.objects}
    assert pairs & palette.HELD_OUT_PAIRS
