from pathlib import Path

import numpy as np

import latentdiff.evaluation
from latentdiff.evaluation.detector import Detection
from latentdiff.evaluation.scoring import CATEGORIES, score, score_image
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.world import palette
from latentdiff.world.captions import canonical_caption, parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import sample_scene

SUITE = evaluation_suite()
SPECS = [parse_caption(prompt) for prompt in SUITE]


def test_suite_is_fixed_and_shipped_as_suite_txt():
    shipped = Path(latentdiff.evaluation.__file__).with_name("suite.txt").read_text()
    assert shipped.splitlines() == SUITE
    assert evaluation_suite() == SUITE


def test_suite_prompts_are_distinct_and_canonical():
    assert len(SUITE) >= 300
    assert len(set(SUITE)) == len(SUITE)
    assert [canonical_caption(spec) for spec in SPECS] == SUITE


def test_suite_covers_every_category_phrase_and_held_out_pair():
    empty = Detection(None, ())
    categories = {c for spec in SPECS for c in score_image(spec, empty)}
    assert categories == set(CATEGORIES)
    assert {s.position for s in SPECS} == {None, *palette.POSITIONS}
    assert {s.relation for s in SPECS} == {None, *palette.RELATIONS}
    assert {s.count for s in SPECS} == {1, 2, 3, 4}
    assert {s.background for s in SPECS} == {None, *palette.BACKGROUND_COLORS}
    assert {o.size for s in SPECS for o in s.objects} == {None, *palette.SIZES}
    held_out = [s for s in SPECS if s.held_out]
    assert len(held_out) >= 0.2 * len(SUITE)
    assert {s.kind for s in held_out} == {"single", "counting", "two_object"}
    named = {(o.color, o.shape) for s in held_out for o in s.objects}
    assert palette.HELD_OUT_PAIRS <= named


def test_ground_truth_scenes_of_the_suite_score_perfectly():
    rng = np.random.default_rng(0)
    images = [render_scene(sample_scene(spec, rng), 64) for spec in SPECS]
    report = score(SUITE, images)
    assert report.accuracy == dict.fromkeys(CATEGORIES, 1.0)
