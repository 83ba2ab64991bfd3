import itertools

import numpy as np
import pytest

from latentdiff.world import palette
from latentdiff.world.captions import parse_caption
from latentdiff.world.scenes import Scene, sample_scene, sample_scenes, sample_spec
from latentdiff.world.spec import ObjectSpec, PromptSpec

EPS = 1e-9


def _gap(a, b):
    """Largest axis separation between two boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _position_holds(position, cx, cy):
    r = palette.POSITION_CENTER_RADIUS
    return {
        "on the left": cx < palette.POSITION_LEFT_MAX,
        "on the right": cx > palette.POSITION_RIGHT_MIN,
        "at the top": cy < palette.POSITION_TOP_MAX,
        "at the bottom": cy > palette.POSITION_BOTTOM_MIN,
        "in the center": abs(cx - 32) <= r and abs(cy - 32) <= r,
    }[position]


def _relation_holds(relation, first, second):
    (x1, y1), (x2, y2) = first.center, second.center
    d = palette.RELATION_MIN_OFFSET
    return {
        "to the left of": x1 + d <= x2,
        "to the right of": x1 >= x2 + d,
        "above": y1 + d <= y2,
        "below": y1 >= y2 + d,
    }[relation]


def assert_satisfies(scene: Scene, spec: PromptSpec) -> None:
    """Every WORLD.md rule for one scene drawn for `spec`."""
    named = spec.objects * spec.count if spec.kind == "counting" else spec.objects
    assert len(scene.objects) == len(named)
    assert scene.background in palette.BACKGROUND_COLORS
    if spec.background:
        assert scene.background == spec.background
    for obj, want in zip(scene.objects, named, strict=True):
        assert (obj.color, obj.shape) == (want.color, want.shape)
        assert want.size in (None, obj.size)
        nominal = palette.SIZE_SIDE[obj.size]
        assert nominal * 0.85 - EPS <= obj.side <= nominal * 1.15 + EPS
        x0, y0, x1, y1 = obj.bbox
        assert x0 >= -EPS and y0 >= -EPS and x1 <= 64 + EPS and y1 <= 64 + EPS
    for a, b in itertools.combinations(scene.objects, 2):
        assert _gap(a.bbox, b.bbox) >= palette.MIN_GAP - EPS
    if spec.position:
        assert _position_holds(spec.position, *scene.objects[0].center)
    if spec.relation:
        assert _relation_holds(spec.relation, *scene.objects)
        assert scene.objects[0].color != scene.objects[1].color or (
            scene.objects[0].shape != scene.objects[1].shape
        )


def test_sample_scenes_is_deterministic_and_prefix_stable():
    assert sample_scenes(40, seed=7) == sample_scenes(40, seed=7)
    assert sample_scenes(40, seed=7)[:10] == sample_scenes(10, seed=7)
    assert sample_scenes(40, seed=7) != sample_scenes(40, seed=8)


def test_sampled_scenes_satisfy_their_canonical_caption():
    scenes = sample_scenes(3000, seed=1)
    for scene in scenes:
        assert_satisfies(scene, parse_caption(scene.canonical_caption))
    kinds = {parse_caption(s.canonical_caption).kind for s in scenes}
    assert kinds == {"single", "counting", "two_object"}
    paraphrased = sum(s.caption != s.canonical_caption for s in scenes) / len(scenes)
    assert 0.1 < paraphrased < 0.35


@pytest.mark.parametrize("position", palette.POSITIONS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_every_position_is_satisfied(position, size):
    spec = PromptSpec("single", (ObjectSpec("red", "triangle", size),), position=position)
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert_satisfies(sample_scene(spec, rng), spec)


@pytest.mark.parametrize("relation", palette.RELATIONS)
def test_every_relation_is_satisfied(relation):
    objects = (ObjectSpec("blue", "circle"), ObjectSpec("blue", "triangle"))
    spec = PromptSpec("two_object", objects, 2, relation=relation, background="white")
    rng = np.random.default_rng(1)
    for _ in range(200):
        assert_satisfies(sample_scene(spec, rng), spec)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_counting_scenes_fit_the_canvas(count):
    spec = PromptSpec("counting", (ObjectSpec("yellow", "square"),), count)
    rng = np.random.default_rng(2)
    scenes = [sample_scene(spec, rng) for _ in range(200)]
    for scene in scenes:
        assert_satisfies(scene, spec)
    assert {obj.size for scene in scenes for obj in scene.objects} == {"small", "large"}


def _pairs(scenes):
    return {(obj.color, obj.shape) for scene in scenes for obj in scene.objects}


def test_held_out_pairs_never_appear_in_training_scenes():
    pairs = _pairs(sample_scenes(5000, seed=3))
    assert not pairs & palette.HELD_OUT_PAIRS
    assert len(pairs) == 6 * 3 - len(palette.HELD_OUT_PAIRS)  # all other pairs do appear


def test_held_out_pairs_appear_when_included():
    scenes = sample_scenes(1000, seed=4, include_held_out=True)
    assert palette.HELD_OUT_PAIRS <= _pairs(scenes)


def test_sample_spec_excludes_held_out_and_mixes_kinds():
    rng = np.random.default_rng(5)
    specs = [sample_spec(rng) for _ in range(2000)]
    assert not any(spec.held_out for spec in specs)
    assert {s.position for s in specs} == {None, *palette.POSITIONS}
    assert {s.relation for s in specs} == {None, *palette.RELATIONS}
    assert {s.count for s in specs} == {1, 2, 3, 4}
    assert {s.background for s in specs} == {None, *palette.BACKGROUND_COLORS}
