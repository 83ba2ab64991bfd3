"""Captions of the Shapes World: the canonical grammar of WORLD.md, its parser, paraphrases.

Canonical grammar (lower case, `a`/`an` by English rules):
    single      `a [small|large] {color} {shape}[ {position}]`
    counting    `{two|three|four} {color} {shape}s`
    two objects `a {color1} {shape1} {relation} a {color2} {shape2}`
    video       `a {color} {shape} moving {left|right|up|down}`
each optionally followed by ` on a {black|gray|white} background`.
"""

from __future__ import annotations

import re

import numpy as np

from latentdiff.errors import UsageError
from latentdiff.world import palette
from latentdiff.world.rng import pick
from latentdiff.world.spec import ObjectSpec, PromptSpec

NUMBERS: dict[str, int] = {word: n for n, word in palette.COUNT_WORDS.items()}
_BACKGROUND_SUFFIX = re.compile(r"^(?P<rest>.+) on an? (?P<background>\S+) background$")


def with_article(phrase: str) -> str:
    """`a red circle`, `an orange circle`: `an` before a vowel letter (true of this vocabulary)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(obj: ObjectSpec) -> str:
    words = [obj.size, obj.color, obj.shape] if obj.size else [obj.color, obj.shape]
    return with_article(" ".join(words))


def canonical_caption(spec: PromptSpec) -> str:
    """The one canonical caption of `spec` (WORLD.md grammar)."""
    if spec.kind == "counting":
        obj = spec.objects[0]
        text = f"{palette.COUNT_WORDS[spec.count]} {obj.color} {obj.shape}s"
    elif spec.kind == "two_object":
        first, second = spec.objects
        text = f"{_noun_phrase(first)} {spec.relation} {_noun_phrase(second)}"
    else:
        text = _noun_phrase(spec.objects[0])
        if spec.position:
            text += f" {spec.position}"
        if spec.motion:
            text += f" moving {spec.motion}"
    if spec.background:
        text += f" on a {spec.background} background"
    return text


def parse_caption(text: str) -> PromptSpec:
    """The `PromptSpec` of a canonical caption; `UsageError` naming the word it cannot read.

    Case, surrounding white space and a final period are forgiven; nothing else is.
    """
    caption = " ".join(text.lower().strip().rstrip(".").split())
    if not caption:
        raise UsageError("empty caption")
    background = None
    match = _BACKGROUND_SUFFIX.match(caption)
    if match:
        background = match["background"]
        if background not in palette.BACKGROUND_COLORS:
            raise UsageError(f"unknown background colour {background!r} in caption {caption!r}")
        caption = match["rest"]
    words = caption.split()
    if words[0] in NUMBERS:
        return _parse_counting(words, background, caption)
    first, rest = _parse_object(words, caption)
    phrase = " ".join(rest)
    if not rest or phrase in palette.POSITIONS:
        return PromptSpec("single", (first,), position=phrase or None, background=background)
    if len(rest) == 2 and rest[0] == "moving":
        if rest[1] not in palette.MOTION_DIRECTIONS:
            raise UsageError(f"unknown direction {rest[1]!r} in caption {caption!r}")
        return PromptSpec("single", (first,), background=background, motion=rest[1])
    for relation in palette.RELATIONS:
        n = len(relation.split())
        if rest[:n] == relation.split():
            return _parse_two_object(first, relation, rest[n:], background, caption)
    raise UsageError(f"cannot parse {rest[0]!r} in caption {caption!r}")


def _word(words: list[str], i: int, what: str, caption: str) -> str:
    if i >= len(words):
        raise UsageError(f"caption {caption!r} ends before the {what}")
    return words[i]


def _parse_object(words: list[str], caption: str) -> tuple[ObjectSpec, list[str]]:
    """`a [size] color shape …` → the object and the words after it."""
    article = _word(words, 0, "object", caption)
    if article not in ("a", "an"):
        raise UsageError(
            f"expected 'a', 'an' or two/three/four, got {article!r} in caption {caption!r}"
        )
    i, size = 1, None
    if _word(words, i, "colour", caption) in palette.SIZES:
        size, i = words[i], i + 1
    color = _word(words, i, "colour", caption)
    if color not in palette.OBJECT_COLORS:
        followed_by_color = i + 1 < len(words) and words[i + 1] in palette.OBJECT_COLORS
        what = "size" if followed_by_color and size is None else "colour"
        raise UsageError(f"unknown {what} {color!r} in caption {caption!r}")
    shape = _word(words, i + 1, "shape", caption)
    if shape not in palette.SHAPES:
        raise UsageError(f"unknown shape {shape!r} in caption {caption!r}")
    return ObjectSpec(color, shape, size), words[i + 2 :]


def _parse_counting(words: list[str], background: str | None, caption: str) -> PromptSpec:
    color = _word(words, 1, "colour", caption)
    if color not in palette.OBJECT_COLORS:
        raise UsageError(f"unknown colour {color!r} in caption {caption!r}")
    plural = _word(words, 2, "shape", caption)
    if plural[:-1] not in palette.SHAPES or not plural.endswith("s"):
        raise UsageError(f"unknown plural shape {plural!r} in caption {caption!r}")
    if len(words) > 3:
        raise UsageError(f"cannot parse {words[3]!r} in caption {caption!r}")
    objects = (ObjectSpec(color, plural[:-1]),)
    return PromptSpec("counting", objects, NUMBERS[words[0]], background=background)


def _parse_two_object(
    first: ObjectSpec, relation: str, words: list[str], background: str | None, caption: str
) -> PromptSpec:
    second, rest = _parse_object(words, caption)
    if rest:
        raise UsageError(f"cannot parse {rest[0]!r} in caption {caption!r}")
    if first.size or second.size:
        raise UsageError(f"size words name a single object only, in caption {caption!r}")
    if first == second:
        raise UsageError(f"the two objects must differ in colour or shape: {caption!r}")
    return PromptSpec("two_object", (first, second), 2, relation=relation, background=background)


# Paraphrases: synonyms and word orders that still name the same things. The first entry of
# each tuple is the canonical word, so a paraphrase may coincide with the canonical caption.
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_PHRASES = {
    "on the left": ("on the left", "at the left side", "on the left side", "to the left"),
    "on the right": ("on the right", "at the right side", "on the right side", "to the right"),
    "at the top": ("at the top", "near the top", "at the top of the picture"),
    "at the bottom": ("at the bottom", "near the bottom", "at the bottom of the picture"),
    "in the center": ("in the center", "in the middle", "at the center"),
}
POSITION_LABELS = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}
RELATION_PHRASES = {
    "to the left of": ("to the left of", "left of", "on the left of"),
    "to the right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
INVERSE_RELATIONS = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
BACKGROUND_PHRASES = (
    " on a {} background",
    " with a {} background",
    " against a {} backdrop",
    ", {} background",
)
DIGITS = {2: "2", 3: "3", 4: "4"}


def paraphrase(spec: PromptSpec, rng: np.random.Generator) -> str:
    """A caption meaning the same as `canonical_caption(spec)`, in other words.

    Phrasings: shape synonyms (circle/ball/disc, square/box/block), size synonyms
    (small/little/tiny, large/big); single objects as `{np} {pos}`, `there is {np} {pos}`,
    `{pos} there is {np}`, `left: {np}`, with position synonyms (`at the left side`, `in the
    middle`, `near the top` …); counts as `three red circles`, `3 red balls`, `there are three
    red circles`; two objects as `{np1} {rel} {np2}`, `{np2} {inverse rel} {np1}`,
    `{np1} is {rel} {np2}` with relation synonyms (`left of`, `over`, `under`, `beneath` …);
    video captions as `{np} moving {dir}` or `{np} that moves {dir}`; background as
    ` on a gray background`, ` with a gray background`, ` against a gray backdrop`,
    `, gray background`. Paraphrases are for training only; `parse_caption` reads canonical
    captions.
    """
    if spec.kind == "counting":
        text = _paraphrase_counting(spec, rng)
    elif spec.kind == "two_object":
        text = _paraphrase_two_object(spec, rng)
    else:
        text = _paraphrase_single(spec, rng)
    if spec.background:
        text += pick(rng, BACKGROUND_PHRASES).format(spec.background)
    return text


def _paraphrase_noun(obj: ObjectSpec, rng: np.random.Generator) -> str:
    words = [pick(rng, SIZE_WORDS[obj.size])] if obj.size else []
    words += [obj.color, pick(rng, SHAPE_WORDS[obj.shape])]
    return with_article(" ".join(words))


def _paraphrase_single(spec: PromptSpec, rng: np.random.Generator) -> str:
    noun = _paraphrase_noun(spec.objects[0], rng)
    if spec.motion:
        return pick(rng, ("{} moving {}", "{} that moves {}")).format(noun, spec.motion)
    if spec.position is None:
        return pick(rng, ("{}", "there is {}", "a picture of {}")).format(noun)
    position = pick(rng, POSITION_PHRASES[spec.position])
    templates = ("{n} {p}", "there is {n} {p}", "{p} there is {n}", "{label}: {n}")
    label = POSITION_LABELS[spec.position]
    return pick(rng, templates).format(n=noun, p=position, label=label)


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("x") else "s")


def _paraphrase_counting(spec: PromptSpec, rng: np.random.Generator) -> str:
    obj = spec.objects[0]
    number = pick(rng, (palette.COUNT_WORDS[spec.count], DIGITS[spec.count]))
    phrase = f"{number} {obj.color} {_plural(pick(rng, SHAPE_WORDS[obj.shape]))}"
    return pick(rng, ("{}", "there are {}")).format(phrase)


def _paraphrase_two_object(spec: PromptSpec, rng: np.random.Generator) -> str:
    first, second = (_paraphrase_noun(obj, rng) for obj in spec.objects)
    relation = pick(rng, RELATION_PHRASES[spec.relation])
    inverse = pick(rng, RELATION_PHRASES[INVERSE_RELATIONS[spec.relation]])
    return pick(rng, ("{a} {r} {b}", "{b} {i} {a}", "{a} is {r} {b}")).format(
        a=first, b=second, r=relation, i=inverse
    )


def motion_spec(color: str, shape: str, direction: str) -> PromptSpec:
    """The spec of a video caption `a {color} {shape} moving {direction}`."""
    return PromptSpec("single", (ObjectSpec(color, shape),), motion=direction)


def caption_corpus(n: int, seed: int) -> list[str]:
    """`n` training captions (no held-out pair), deterministic from `seed`: for a tokenizer.

    Half canonical, half paraphrased; one in ten is a video caption (`… moving left`).
    """
    from latentdiff.world.scenes import allowed_pairs, sample_spec  # scenes imports captions

    rng = np.random.default_rng(seed)
    pairs = allowed_pairs(include_held_out=False)
    captions = []
    for _ in range(n):
        if rng.random() < 0.1:
            color, shape = pick(rng, pairs)
            spec = motion_spec(color, shape, pick(rng, palette.MOTION_DIRECTIONS))
        else:
            spec = sample_spec(rng)
        captions.append(paraphrase(spec, rng) if rng.random() < 0.5 else canonical_caption(spec))
    return captions
