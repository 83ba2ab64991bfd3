import numpy as np
import pytest

from latentdiff.evaluation.detector import (
    MIN_IMAGE_SIZE,
    NO_COLOR,
    classify_shape,
    detect,
    nearest_palette_labels,
)
from latentdiff.evaluation.scoring import score
from latentdiff.world import palette
from latentdiff.world.render import render_batch, render_scene
from latentdiff.world.scenes import Scene, SceneObject


def canvas(size: int, background: str = "gray") -> np.ndarray:
    return np.full((size, size, 3), palette.BACKGROUND_COLORS[background], dtype=np.uint8)


def paint(image: np.ndarray, color: str, x0: int, y0: int, x1: int, y1: int) -> None:
    image[y0:y1, x0:x1] = palette.OBJECT_COLORS[color]


@pytest.mark.parametrize(("size", "n", "seed"), [(64, 2000, 0), (256, 300, 1)])
def test_fresh_ground_truth_scores_at_least_995_in_every_category(size, n, seed):
    images, scenes = render_batch(n, size, seed, include_held_out=True)
    report = score([scene.canonical_caption for scene in scenes], images)
    assert report.bad_prompts == ()
    assert all(report.total[c] > 0 for c in report.total)
    assert all(accuracy >= 0.995 for accuracy in report.accuracy.values())
    assert report.overall >= 0.995


def test_min_image_size_is_the_smallest_side_that_scores_995_on_ground_truth():
    def overall(size):
        images, scenes = render_batch(500, size, 0, include_held_out=True)
        return score([scene.canonical_caption for scene in scenes], images).overall

    assert MIN_IMAGE_SIZE == 40
    assert overall(MIN_IMAGE_SIZE) >= 0.995 > overall(MIN_IMAGE_SIZE - 8)  # 0.997, 0.963


@pytest.mark.parametrize("size", [64, 128, 200])
def test_rendered_objects_are_found_with_their_attributes_in_reference_units(size):
    objects = (
        SceneObject("orange", "circle", "large", (16.0, 20.0), 24.0),
        SceneObject("purple", "triangle", "small", (48.0, 14.0), 12.0),
        SceneObject("green", "square", "small", (44.0, 48.0), 13.0),
    )
    detection = detect(render_scene(Scene("white", objects), size))
    assert detection.background == "white"
    found = sorted(detection.objects, key=lambda o: o.color)
    expected = sorted(objects, key=lambda o: o.color)
    assert [(o.color, o.shape, o.size) for o in found] == [
        (o.color, o.shape, o.size) for o in expected
    ]
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_allclose(got.center, want.center, atol=0.5)
        np.testing.assert_allclose(
            got.center_px, np.array(want.center) * size / 64, atol=0.5 * size / 64
        )


def test_painted_square_geometry_in_pixels():
    image = canvas(64, "black")
    paint(image, "red", 10, 20, 24, 30)  # 14 × 10 px
    (obj,) = detect(image).objects
    assert obj.bbox == (10, 20, 24, 30)
    assert obj.area == 140
    assert obj.center_px == (17.0, 25.0)
    assert obj.center == (17.0, 25.0)
    assert obj.shape == "square"  # fill 1.0, half the mass in the top half


def test_centre_and_size_scale_to_reference_units_on_non_square_images():
    image = canvas(64, "gray").repeat(2, axis=1)  # 64 high, 128 wide
    paint(image, "blue", 0, 0, 40, 20)  # 20 reference units wide and high: large
    (obj,) = detect(image).objects
    assert obj.center_px == (20.0, 10.0)
    assert obj.center == (10.0, 10.0)
    assert obj.size == "large"


@pytest.mark.parametrize(("size", "min_area"), [(64, 12), (128, 48)])
def test_components_below_the_scaled_minimum_area_are_not_objects(size, min_area):
    image = canvas(size)
    paint(image, "yellow", 2, 2, 2 + min_area, 3)  # a 1-px line of exactly min_area
    paint(image, "yellow", 2, 10, 1 + min_area, 11)  # one pixel short
    (obj,) = detect(image).objects
    assert obj.area == min_area
    assert obj.bbox[1] == 2


def test_diagonal_contact_does_not_join_components():
    image = canvas(64)
    paint(image, "red", 10, 10, 16, 16)
    paint(image, "red", 16, 16, 22, 22)  # touches the first only at a corner
    paint(image, "red", 30, 10, 36, 16)
    paint(image, "red", 36, 12, 40, 14)  # shares an edge with the third: one object
    areas = sorted(o.area for o in detect(image).objects)
    assert areas == [36, 36, 44]


def test_colours_beyond_distance_60_belong_to_no_palette_colour():
    red = np.array(palette.OBJECT_COLORS["red"])
    image = np.array([[red + [0, 36, 48], red + [0, 36, 49], (60, 200, 200)]], dtype=np.uint8)
    # distance √(36² + 48²) = 60 is within, √(36² + 49²) > 60 is not
    labels = nearest_palette_labels(image)
    assert labels.tolist() == [[0, NO_COLOR, NO_COLOR]]


def test_background_is_the_most_common_background_colour_or_none():
    image = canvas(64, "white")
    image[:40] = palette.BACKGROUND_COLORS["black"]
    assert detect(image).background == "black"
    nothing = detect(np.full((8, 8, 3), (60, 200, 200), dtype=np.uint8))
    assert nothing.background is None
    assert nothing.objects == ()


@pytest.mark.parametrize(
    ("fill", "top", "shape"),
    [(1.0, 0.5, "square"), (0.785, 0.5, "circle"), (0.5, 0.25, "triangle"), (0.9, 0.5, "circle")],
)
def test_shape_from_fill_ratio_and_top_half_share(fill, top, shape):
    assert classify_shape(fill, top) == shape


def test_rejects_images_that_are_not_rgb():
    with pytest.raises(ValueError, match="RGB"):
        detect(np.zeros((8, 8), dtype=np.uint8))


def flood_fill_components(labels: np.ndarray) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """Reference labelling: (colour label, area, bbox) of each 4-connected object component."""
    height, width = labels.shape
    seen = np.zeros_like(labels, dtype=bool)
    found = []
    for y, x in zip(
        *np.nonzero((labels >= 0) & (labels < len(palette.OBJECT_COLORS))), strict=True
    ):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, pixels = [(y, x)], []
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx]:
                    if labels[ny, nx] == labels[y, x]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = np.array(pixels).T
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        found.append((int(labels[y, x]), len(pixels), bbox))
    return sorted(found)


@pytest.mark.parametrize("seed", range(5))
def test_components_match_a_flood_fill_on_random_blobs(seed):
    # Three colours at high density make long, branching, merging components (U and n shapes).
    rng = np.random.default_rng(seed)
    colors = ["red", "blue", "green", "white"]
    choice = rng.choice(len(colors), size=(32, 40), p=[0.3, 0.2, 0.2, 0.3])
    image = np.array([palette.OBJECT_COLORS.get(c) or palette.BACKGROUND_COLORS[c] for c in colors])
    image = image[choice].astype(np.uint8)
    min_area = 12 * (32 / 64) * (40 / 64)
    expected = [c for c in flood_fill_components(nearest_palette_labels(image)) if c[1] >= min_area]
    names = list(palette.OBJECT_COLORS)
    got = sorted((names.index(o.color), o.area, o.bbox) for o in detect(image).objects)
    assert len(expected) > 3
    assert got == expected
