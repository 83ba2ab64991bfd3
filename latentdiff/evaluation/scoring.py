"""GenEval-style prompt adherence: does an image show what its canonical prompt asks for?

WORLD.md's six categories; a prompt counts in every category that applies to it:
    single         single-object prompts: exactly one object, of the named colour and shape,
                   and of the named size and on the named background when the prompt names them
    counting       exactly N objects, all of the named colour and shape
    two_object     exactly two objects whose shapes are the two named shapes (colour ignored)
    color_binding  two_object holds and each object has the colour named with its shape
    position       (a position phrase or a relation) the named objects are there with the
                   right colour and shape, and the position or relation holds between their
                   centres; with several candidates, one placement that holds is enough
    held_out       (a held-out colour–shape pair named) every rule above that applies holds
Only `single` checks size and background, as WORLD.md states. A video caption (`… moving
left`) is scored on what a still image can show: its single-object rules.

`overall` is the mean accuracy over the categories that have prompts; a category without
prompts has no accuracy (None) and stays out of the mean. A prompt that does not parse counts
as wrong in every category and is listed in `Report.bad_prompts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from latentdiff.errors import UsageError
from latentdiff.evaluation.detector import DetectedObject, Detection, detect
from latentdiff.world import palette
from latentdiff.world.captions import parse_caption
from latentdiff.world.spec import ObjectSpec, PromptSpec

CATEGORIES: tuple[str, ...] = (
    "single",
    "counting",
    "two_object",
    "color_binding",
    "position",
    "held_out",
)

Point = tuple[float, float]
_MIDDLE = palette.REFERENCE_SIZE / 2

# Position phrases and relations on object centres, in reference units (y grows downward).
POSITION_TESTS: dict[str, Callable[[Point], bool]] = {
    "on the left": lambda c: c[0] < palette.POSITION_LEFT_MAX,
    "on the right": lambda c: c[0] > palette.POSITION_RIGHT_MIN,
    "at the top": lambda c: c[1] < palette.POSITION_TOP_MAX,
    "at the bottom": lambda c: c[1] > palette.POSITION_BOTTOM_MIN,
    "in the center": lambda c: (
        abs(c[0] - _MIDDLE) <= palette.POSITION_CENTER_RADIUS
        and abs(c[1] - _MIDDLE) <= palette.POSITION_CENTER_RADIUS
    ),
}
RELATION_TESTS: dict[str, Callable[[Point, Point], bool]] = {
    "to the left of": lambda a, b: a[0] + palette.RELATION_MIN_OFFSET <= b[0],
    "to the right of": lambda a, b: a[0] >= b[0] + palette.RELATION_MIN_OFFSET,
    "above": lambda a, b: a[1] + palette.RELATION_MIN_OFFSET <= b[1],
    "below": lambda a, b: a[1] >= b[1] + palette.RELATION_MIN_OFFSET,
}


def score_image(spec: PromptSpec, detection: Detection) -> dict[str, bool]:
    """Pass/fail of `detection` in each category that applies to `spec` (and only those)."""
    if spec.kind == "single":
        results = _score_single(spec, detection)
    elif spec.kind == "counting":
        named, objects = spec.objects[0], detection.objects
        results = {
            "counting": len(objects) == spec.count and all(matches(o, named) for o in objects)
        }
    else:
        results = _score_two_objects(spec, detection.objects)
    if spec.held_out:
        results["held_out"] = all(results.values())
    return results


def matches(obj: DetectedObject, named: ObjectSpec) -> bool:
    """Whether a detected object has the named colour and shape."""
    return obj.color == named.color and obj.shape == named.shape


def _score_single(spec: PromptSpec, detection: Detection) -> dict[str, bool]:
    named, objects = spec.objects[0], detection.objects
    results = {
        "single": len(objects) == 1
        and matches(objects[0], named)
        and named.size in (None, objects[0].size)
        and spec.background in (None, detection.background)
    }
    if spec.position is not None:
        holds = POSITION_TESTS[spec.position]
        results["position"] = any(matches(o, named) and holds(o.center) for o in objects)
    return results


# The ways a prompt of each kind can fail, each checked on its own (see `failures`).
FAILURE_CRITERIA: dict[str, tuple[str, ...]] = {
    "single": ("count", "color", "shape", "size", "background", "position"),
    "counting": ("count", "color", "shape"),
    "two_object": ("count", "shape", "binding", "relation"),
}


def failures(spec: PromptSpec, detection: Detection) -> set[str]:
    """Which of FAILURE_CRITERIA[spec.kind] the image misses; tells apart the ways a model
    fails (e.g. it draws two objects but binds the colours to the wrong shapes)."""
    if spec.kind == "single":
        misplaced = spec.position is not None and not _score_single(spec, detection)["position"]
        return single_failures(spec, detection) | ({"position"} if misplaced else set())
    if spec.kind == "counting":
        return counting_failures(spec, detection)
    return two_object_failures(spec, detection)


def single_failures(spec: PromptSpec, detection: Detection) -> set[str]:
    """Which of a single-object prompt's criteria the image misses (empty: `single` passes).

    "count": not exactly one object; "color"/"shape"/"size": no detected object has the named
    one (size only when named); "background": not the named one (only when named). Tells apart
    the ways a model fails, e.g. a model that ignores "on a black background".
    """
    named, objects = spec.objects[0], detection.objects
    failures = set() if len(objects) == 1 else {"count"}
    for criterion, wanted in (("color", named.color), ("shape", named.shape)):
        if not any(getattr(o, criterion) == wanted for o in objects):
            failures.add(criterion)
    if named.size is not None and not any(o.size == named.size for o in objects):
        failures.add("size")
    if spec.background not in (None, detection.background):
        failures.add("background")
    return failures


def counting_failures(spec: PromptSpec, detection: Detection) -> set[str]:
    """ "count": not exactly N objects; "color"/"shape": some object (or, with none, the
    image) lacks the named one. Empty exactly when `counting` passes."""
    named, objects = spec.objects[0], detection.objects
    failures = set() if len(objects) == spec.count else {"count"}
    for criterion, wanted in (("color", named.color), ("shape", named.shape)):
        if not objects or any(getattr(o, criterion) != wanted for o in objects):
            failures.add(criterion)
    return failures


def two_object_failures(spec: PromptSpec, detection: Detection) -> set[str]:
    """ "count": not exactly two objects; "shape": the named shapes are not all there (both
    circles, for "a red circle … a blue circle"); "binding": a named colour–shape pair has no
    object; "relation": both pairs are there but no placement of them satisfies the relation.
    Empty exactly when every category of the prompt passes."""
    objects = detection.objects
    failures = set() if len(objects) == 2 else {"count"}
    if Counter(named.shape for named in spec.objects) - Counter(o.shape for o in objects):
        failures.add("shape")
    if any(not any(matches(o, named) for o in objects) for named in spec.objects):
        failures.add("binding")
    elif spec.relation is not None and not _score_two_objects(spec, objects)["position"]:
        failures.add("relation")
    return failures


def _score_two_objects(spec: PromptSpec, objects: tuple[DetectedObject, ...]) -> dict[str, bool]:
    first, second = spec.objects
    shapes_match = sorted(o.shape for o in objects) == sorted((first.shape, second.shape))
    two_object = len(objects) == 2 and shapes_match
    results = {
        "two_object": two_object,
        "color_binding": two_object
        and any(matches(a, first) and matches(b, second) for a, b in permutations(objects)),
    }
    if spec.relation is not None:
        holds = RELATION_TESTS[spec.relation]
        results["position"] = any(
            matches(a, first) and matches(b, second) and holds(a.center, b.center)
            for a, b in permutations(objects, 2)
        )
    return results


@dataclass(frozen=True)
class BadPrompt:
    """A prompt that does not parse: its line index in the run, its text and why."""

    index: int
    prompt: str
    reason: str


@dataclass(frozen=True)
class Report:
    """Per-category tallies of one scoring run, and the per-prompt results behind them."""

    correct: dict[str, int]
    total: dict[str, int]
    results: tuple[dict[str, bool], ...]
    bad_prompts: tuple[BadPrompt, ...]

    @property
    def accuracy(self) -> dict[str, float | None]:
        """Fraction correct per category; None for a category without prompts."""
        return {c: self.correct[c] / self.total[c] if self.total[c] else None for c in CATEGORIES}

    @property
    def overall(self) -> float | None:
        """Mean accuracy over the categories that have prompts (None if none has)."""
        scored = [a for a in self.accuracy.values() if a is not None]
        return sum(scored) / len(scored) if scored else None

    def to_dict(self) -> dict[str, float | None]:
        """The six category accuracies and `overall`: what `evaluate adherence --json` prints."""
        return {**self.accuracy, "overall": self.overall}


def score(prompts: Sequence[str], images: Iterable[np.ndarray]) -> Report:
    """Score one image per prompt (in order) on every category; bad prompts count as wrong."""
    results, bad = [], []
    for index, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        try:
            spec = parse_caption(prompt)
        except UsageError as error:
            bad.append(BadPrompt(index, prompt, str(error)))
            results.append(dict.fromkeys(CATEGORIES, False))
            continue
        results.append(score_image(spec, detect(image)))
    return tally(results, bad)


def tally(results: Sequence[dict[str, bool]], bad_prompts: Sequence[BadPrompt] = ()) -> Report:
    """A report from per-prompt category results."""
    correct = {c: sum(r.get(c, False) for r in results) for c in CATEGORIES}
    total = {c: sum(c in r for r in results) for c in CATEGORIES}
    return Report(correct, total, tuple(results), tuple(bad_prompts))
