import numpy as np
import pytest

from latentdiff.evaluation.detector import DetectedObject, Detection
from latentdiff.evaluation.scoring import (
    CATEGORIES,
    FAILURE_CRITERIA,
    failures,
    score,
    score_image,
    single_failures,
    tally,
)
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import Scene, SceneObject


def obj(color: str, shape: str, x: float, y: float, size: str = "small") -> DetectedObject:
    return DetectedObject(color, shape, size, (x, y), (x, y), (0, 0, 1, 1), 100)


def scored(prompt: str, *objects: DetectedObject, background: str = "gray") -> dict[str, bool]:
    return score_image(parse_caption(prompt), Detection(background, objects))


def test_single_prompt_passes_and_counts_only_in_its_categories():
    assert scored("a red circle", obj("red", "circle", 30, 30)) == {"single": True}
    assert scored(
        "a small red circle on the left on a gray background", obj("red", "circle", 10, 30)
    ) == {
        "single": True,
        "position": True,
    }


@pytest.mark.parametrize(
    ("prompt", "objects", "background", "failures"),
    [
        ("a red circle", [obj("blue", "circle", 30, 30)], "gray", {"color"}),
        ("a red circle", [obj("red", "square", 30, 30)], "gray", {"shape"}),
        (
            "a red circle",
            [obj("red", "circle", 30, 30), obj("blue", "square", 50, 50)],
            "gray",
            {"count"},
        ),
        ("a red circle", [], "gray", {"count", "color", "shape"}),  # nothing there
        ("a large red circle", [obj("red", "circle", 30, 30, "small")], "gray", {"size"}),
        (
            "a large red circle on a white background",
            [obj("blue", "circle", 30, 30, "small")],
            "black",
            {"color", "size", "background"},
        ),
    ],
)
def test_single_fails(prompt, objects, background, failures):
    assert scored(prompt, *objects, background=background)["single"] is False
    detection = Detection(background, tuple(objects))
    assert single_failures(parse_caption(prompt), detection) == failures


def test_a_passing_single_prompt_has_no_failures():
    detection = Detection("white", (obj("red", "circle", 30, 30, "large"),))
    assert (
        single_failures(parse_caption("a large red circle on a white background"), detection)
        == set()
    )


@pytest.mark.parametrize(
    ("prompt", "objects", "missed"),
    [
        ("three red circles", [obj("red", "circle", 10 * k, 30) for k in (1, 3)], {"count"}),
        (
            "two red circles",
            [obj("red", "circle", 10, 30), obj("red", "square", 40, 30)],
            {"shape"},
        ),
        (
            "two red circles",
            [
                obj("blue", "square", 10, 30),
                obj("red", "circle", 40, 30),
                obj("red", "circle", 50, 9),
            ],
            {"count", "color", "shape"},
        ),
        ("four blue triangles", [], {"count", "color", "shape"}),
        (
            "a red circle to the left of a blue square",
            [obj("blue", "circle", 10, 30), obj("red", "square", 40, 30)],
            {"binding"},
        ),
        (
            "a red circle to the left of a blue square",
            [obj("blue", "square", 10, 30), obj("red", "circle", 40, 30)],
            {"relation"},
        ),
        (
            "a red circle above a blue circle",
            [obj("red", "circle", 30, 10), obj("blue", "square", 30, 40)],
            {"shape", "binding"},
        ),
        (
            "a red circle below a green triangle",
            [obj("red", "circle", 30, 50)],
            {"count", "shape", "binding"},
        ),
        (
            "a red circle to the right of a blue square",
            [
                obj("red", "circle", 50, 30),
                obj("blue", "square", 10, 30),
                obj("red", "circle", 5, 5),
            ],
            {"count"},
        ),
    ],
)
def test_counting_and_two_object_failures_name_each_missed_criterion(prompt, objects, missed):
    spec = parse_caption(prompt)
    found = failures(spec, Detection("gray", tuple(objects)))
    assert found == missed
    assert found <= set(FAILURE_CRITERIA[spec.kind])


def test_failures_are_empty_exactly_when_every_category_passes():
    rng = np.random.default_rng(0)
    colors, shapes = ("red", "blue"), ("circle", "square")
    prompts = [
        "a red circle",
        "a small blue square at the top on a white background",
        "two red circles",
        "three blue squares",
        "a red circle to the left of a blue square",
        "a blue circle above a red circle",
    ]
    passed = 0
    for _ in range(1000):
        n = int(rng.integers(0, 4))
        objects = tuple(
            obj(
                str(rng.choice(colors)),
                str(rng.choice(shapes)),
                *rng.uniform(0, 64, 2),
                size=str(rng.choice(["small", "large"])),
            )
            for _ in range(n)
        )
        background = str(rng.choice(["white", "gray"]))
        for prompt in prompts:
            spec, detection = parse_caption(prompt), Detection(background, objects)
            all_pass = all(score_image(spec, detection).values())
            assert (failures(spec, detection) == set()) == all_pass, (prompt, objects)
            passed += all_pass
    assert passed > 50  # the draw covers passing images, not only failing ones


@pytest.mark.parametrize(
    ("position", "x", "y", "holds"),
    [
        ("on the left", 23.9, 32, True),
        ("on the left", 24.0, 32, False),
        ("on the right", 40.1, 32, True),
        ("on the right", 40.0, 32, False),
        ("at the top", 32, 23.9, True),
        ("at the top", 32, 24.0, False),
        ("at the bottom", 32, 40.1, True),
        ("at the bottom", 32, 40.0, False),
        ("in the center", 40.0, 24.0, True),
        ("in the center", 40.1, 32, False),
        ("in the center", 32, 23.9, False),
    ],
)
def test_position_thresholds_in_reference_units(position, x, y, holds):
    result = scored(f"a red circle {position}", obj("red", "circle", x, y))
    assert result == {"single": True, "position": holds}


def test_single_position_needs_the_named_object_in_place_even_with_others_around():
    result = scored(
        "a red circle on the left", obj("blue", "circle", 10, 30), obj("red", "circle", 50, 30)
    )
    assert result == {"single": False, "position": False}
    result = scored(
        "a red circle on the left", obj("red", "circle", 10, 30), obj("blue", "circle", 50, 30)
    )
    assert result == {"single": False, "position": True}  # an extra object fails `single` only


def test_counting_needs_exactly_n_objects_all_of_the_named_kind():
    three = [obj("green", "triangle", x, 30) for x in (10, 30, 50)]
    assert scored("three green triangles", *three) == {"counting": True}
    assert scored("three green triangles", *three[:2]) == {"counting": False}  # too few
    assert scored("two green triangles", *three) == {"counting": False}  # wrong count
    mixed = [*three[:2], obj("red", "triangle", 50, 30)]
    assert scored("three green triangles", *mixed) == {"counting": False}  # wrong colour


RED_CIRCLE_LEFT_OF_BLUE_SQUARE = "a red circle to the left of a blue square"


def test_two_objects_pass_every_category():
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE, obj("blue", "square", 40, 30), obj("red", "circle", 10, 30)
    )
    assert result == {"two_object": True, "color_binding": True, "position": True}


def test_swapped_colours_fail_binding_and_position_but_not_two_object():
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE, obj("blue", "circle", 10, 30), obj("red", "square", 40, 30)
    )
    assert result == {"two_object": True, "color_binding": False, "position": False}


def test_wrong_relation_fails_position_only():
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE, obj("red", "circle", 40, 30), obj("blue", "square", 10, 30)
    )
    assert result == {"two_object": True, "color_binding": True, "position": False}


def test_an_extra_object_fails_two_object_and_binding_but_the_relation_can_hold():
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE,
        obj("red", "circle", 10, 30),
        obj("blue", "square", 40, 30),
        obj("blue", "square", 40, 50),
    )
    assert result == {"two_object": False, "color_binding": False, "position": True}


def test_two_object_ignores_colour_but_not_shape():
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE,
        obj("green", "circle", 10, 30),
        obj("green", "square", 40, 30),
    )
    assert result == {"two_object": True, "color_binding": False, "position": False}
    result = scored(
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE,
        obj("red", "circle", 10, 30),
        obj("blue", "triangle", 40, 30),
    )
    assert result == {"two_object": False, "color_binding": False, "position": False}


@pytest.mark.parametrize(
    ("relation", "first", "second", "holds"),
    [
        ("to the left of", (20, 30), (32, 30), True),
        ("to the left of", (20, 30), (31.9, 30), False),
        ("to the right of", (32, 30), (20, 30), True),
        ("to the right of", (31.9, 30), (20, 30), False),
        ("above", (30, 20), (30, 32), True),
        ("above", (30, 20), (30, 31.9), False),
        ("below", (30, 32), (30, 20), True),
        ("below", (30, 31.9), (30, 20), False),
    ],
)
def test_relations_need_a_12_unit_offset_between_centres(relation, first, second, holds):
    result = scored(
        f"a red circle {relation} a red square",
        obj("red", "circle", *first),
        obj("red", "square", *second),
    )
    assert result["position"] is holds


def test_binding_with_two_objects_of_one_shape():
    prompt = "a red circle above a blue circle"
    right = scored(prompt, obj("blue", "circle", 30, 50), obj("red", "circle", 30, 10))
    wrong = scored(prompt, obj("blue", "circle", 30, 50), obj("blue", "circle", 30, 10))
    assert right == {"two_object": True, "color_binding": True, "position": True}
    assert wrong == {"two_object": True, "color_binding": False, "position": False}


def test_held_out_needs_every_applicable_rule():
    prompt = "a purple triangle below a red square"
    good = scored(prompt, obj("purple", "triangle", 30, 50), obj("red", "square", 30, 10))
    bad = scored(prompt, obj("purple", "triangle", 30, 50), obj("red", "square", 30, 45))
    assert good["held_out"] is True
    assert bad == {"two_object": True, "color_binding": True, "position": False, "held_out": False}
    assert scored(
        "four orange circles", *[obj("orange", "circle", x, 9) for x in (8, 24, 40, 56)]
    ) == {
        "counting": True,
        "held_out": True,
    }
    assert scored("a green square at the top", obj("green", "square", 30, 40)) == {
        "single": True,
        "position": False,
        "held_out": False,
    }


def test_report_accuracies_and_overall_leave_out_categories_without_prompts():
    report = tally([{"single": True}, {"single": False, "position": True}, {"counting": True}])
    assert report.accuracy == {
        "single": 0.5,
        "counting": 1.0,
        "two_object": None,
        "color_binding": None,
        "position": 1.0,
        "held_out": None,
    }
    assert report.overall == pytest.approx(2.5 / 3)
    assert list(report.to_dict()) == [*CATEGORIES, "overall"]
    assert tally([]).overall is None


def scene_image(background: str, *objects: SceneObject) -> np.ndarray:
    return render_scene(Scene(background, objects), 64)


def test_score_on_hand_built_images_with_a_bad_prompt_counted_wrong_everywhere():
    red_left = SceneObject("red", "circle", "large", (16.0, 32.0), 24.0)
    blue_right = SceneObject("blue", "square", "small", (48.0, 32.0), 12.0)
    prompts = [
        RED_CIRCLE_LEFT_OF_BLUE_SQUARE,
        "a blue square to the left of a red circle",  # wrong relation in the image
        "a large red circle on the left on a black background",  # wrong background
        "a pink circle",  # does not parse
    ]
    images = [
        scene_image("white", red_left, blue_right),
        scene_image("white", red_left, blue_right),
        scene_image("white", red_left),
        scene_image("white", red_left),
    ]
    report = score(prompts, images)
    assert [b.index for b in report.bad_prompts] == [3]
    assert "pink" in report.bad_prompts[0].reason
    assert report.results[:3] == (
        {"two_object": True, "color_binding": True, "position": True},
        {"two_object": True, "color_binding": True, "position": False},
        {"single": False, "position": True},
    )
    assert report.results[3] == dict.fromkeys(CATEGORIES, False)
    assert report.correct == {
        "single": 0,
        "counting": 0,
        "two_object": 2,
        "color_binding": 2,
        "position": 2,
        "held_out": 0,
    }
    assert report.total == {
        "single": 2,
        "counting": 1,
        "two_object": 3,
        "color_binding": 3,
        "position": 4,
        "held_out": 1,
    }


def test_score_needs_one_image_per_prompt():
    with pytest.raises(ValueError):
        score(["a red circle", "a blue square"], [np.zeros((64, 64, 3), np.uint8)])
