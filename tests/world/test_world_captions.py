import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentdiff.errors import UsageError
from latentdiff.world import palette
from latentdiff.world.captions import (
    SHAPE_WORDS,
    SIZE_WORDS,
    canonical_caption,
    caption_corpus,
    paraphrase,
    parse_caption,
)
from latentdiff.world.scenes import sample_spec
from latentdiff.world.spec import ObjectSpec, PromptSpec

colors = st.sampled_from(sorted(palette.OBJECT_COLORS))
shapes = st.sampled_from(palette.SHAPES)
backgrounds = st.none() | st.sampled_from(sorted(palette.BACKGROUND_COLORS))
single_specs = st.builds(
    lambda c, s, size, pos, bg: PromptSpec("single", (ObjectSpec(c, s, size),), 1, pos, None, bg),
    colors,
    shapes,
    st.none() | st.sampled_from(palette.SIZES),
    st.none() | st.sampled_from(palette.POSITIONS),
    backgrounds,
)
motion_specs = st.builds(
    lambda c, s, d, bg: PromptSpec("single", (ObjectSpec(c, s),), background=bg, motion=d),
    colors,
    shapes,
    st.sampled_from(palette.MOTION_DIRECTIONS),
    backgrounds,
)
counting_specs = st.builds(
    lambda c, s, n, bg: PromptSpec("counting", (ObjectSpec(c, s),), n, background=bg),
    colors,
    shapes,
    st.sampled_from([2, 3, 4]),
    backgrounds,
)
two_object_specs = st.builds(
    lambda a, b, rel, bg: PromptSpec(
        "two_object", (ObjectSpec(*a), ObjectSpec(*b)), 2, relation=rel, background=bg
    ),
    st.tuples(colors, shapes),
    st.tuples(colors, shapes),
    st.sampled_from(palette.RELATIONS),
    backgrounds,
).filter(lambda spec: spec.objects[0] != spec.objects[1])
all_specs = single_specs | motion_specs | counting_specs | two_object_specs


@settings(max_examples=300, deadline=None)
@given(all_specs)
def test_parse_inverts_canonical_caption(spec):
    assert parse_caption(canonical_caption(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "caption"),
    [
        (PromptSpec("single", (ObjectSpec("orange", "circle"),)), "an orange circle"),
        (
            PromptSpec("single", (ObjectSpec("red", "square", "large"),), position="on the left"),
            "a large red square on the left",
        ),
        (
            PromptSpec("counting", (ObjectSpec("blue", "triangle"),), 3, background="white"),
            "three blue triangles on a white background",
        ),
        (
            PromptSpec(
                "two_object",
                (ObjectSpec("red", "circle"), ObjectSpec("orange", "square")),
                2,
                relation="to the left of",
            ),
            "a red circle to the left of an orange square",
        ),
        (
            PromptSpec("single", (ObjectSpec("purple", "triangle"),), motion="up"),
            "a purple triangle moving up",
        ),
    ],
)
def test_canonical_caption_follows_the_grammar(spec, caption):
    assert canonical_caption(spec) == caption


def test_parse_forgives_case_spaces_and_final_period():
    spec = parse_caption("  A Large  Red Circle at the TOP. ")
    assert spec == PromptSpec(
        "single", (ObjectSpec("red", "circle", "large"),), position="at the top"
    )


@pytest.mark.parametrize(
    ("caption", "message"),
    [
        ("a pink circle", "unknown colour 'pink'"),
        ("a red hexagon", "unknown shape 'hexagon'"),
        ("a tiny red circle", "unknown size 'tiny'"),
        ("five red circles", "'five'"),
        ("two red circle", "'circle'"),
        ("two pink circles", "unknown colour 'pink'"),
        ("a red circle on a pink background", "unknown background colour 'pink'"),
        ("a red circle somewhere", "'somewhere'"),
        ("a red", "ends before the shape"),
        ("", "empty caption"),
        ("a red circle moving sideways", "'sideways'"),
        ("a small red circle above a blue square", "size words"),
        ("a red circle above a red circle", "differ"),
        ("a red circle above", "ends before the object"),
        ("three red circles on the left", "'on'"),
    ],
)
def test_parse_errors_name_the_bad_word_in_one_line(caption, message):
    with pytest.raises(UsageError, match=message) as error:
        parse_caption(caption)
    assert "\n" not in str(error.value)


def _content_words(spec):
    """Words (any synonym) a paraphrase must still contain, one tuple of choices per thing."""
    needed = [(obj.color,) for obj in spec.objects]
    needed += [tuple(SHAPE_WORDS[obj.shape]) for obj in spec.objects]
    needed += [tuple(SIZE_WORDS[obj.size]) for obj in spec.objects if obj.size]
    if spec.kind == "counting":
        needed.append((palette.COUNT_WORDS[spec.count], str(spec.count)))
    if spec.background:
        needed.append((spec.background,))
    return needed


def test_paraphrases_name_the_same_things():
    rng = np.random.default_rng(0)
    for _ in range(500):
        spec = sample_spec(rng)
        text = paraphrase(spec, rng)
        for choices in _content_words(spec):
            assert any(word in text for word in choices), (text, choices)


def test_paraphrases_vary_and_are_deterministic():
    spec = PromptSpec("single", (ObjectSpec("red", "circle"),), position="on the left")
    texts = [paraphrase(spec, np.random.default_rng(seed)) for seed in range(100)]
    assert len(set(texts)) > 10
    assert {"there is a red ball at the left side", "left: a red circle"} <= set(texts)
    assert texts == [paraphrase(spec, np.random.default_rng(seed)) for seed in range(100)]


def test_relation_paraphrase_may_swap_the_objects_with_the_inverse_relation():
    objects = (ObjectSpec("red", "triangle"), ObjectSpec("blue", "triangle"))
    spec = PromptSpec("two_object", objects, 2, relation="above")
    texts = {paraphrase(spec, np.random.default_rng(seed)) for seed in range(200)}
    assert "a blue triangle below a red triangle" in texts
    assert not any("blue triangle above" in text for text in texts)


def test_caption_corpus_is_deterministic_varied_and_free_of_held_out_pairs():
    corpus = caption_corpus(3000, seed=0)
    assert corpus == caption_corpus(3000, seed=0)
    assert len(corpus) == 3000
    assert any("moving" in text for text in corpus)
    assert any(text.startswith("there is") for text in corpus)
    assert any("two" in text for text in corpus)
    for color, shape in palette.HELD_OUT_PAIRS:
        for word in SHAPE_WORDS[shape]:
            assert not any(f"{color} {word}" in text for text in corpus)
