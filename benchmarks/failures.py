"""Why prompts fail: per prompt kind, the share of prompts missing each criterion, per model.

Generates the evaluation suite's prompts exactly as `latentdiff evaluate model` does (image k
with seed `--seed` + k, so these are the very images its scores judged) and sorts every miss by
`latentdiff.evaluation.scoring.failures`:
    single      count, color, shape, size, background, position
    counting    count, color, shape
    two_object  count, shape, binding (a named colour–shape pair is missing), relation (both
                pairs are there, the relation between them does not hold)
"correct" is the share of prompts that pass every category they count in. A criterion that only
some prompts name (size, background, position) is a share of the prompts that name it;
`missed_by_phrase` gives, per position phrase and relation, the share misplaced among the
prompts whose objects are drawn right; `relations_reversed` the share of relation misses that
put the objects the other way round (the rest are too close); `objects_drawn` how many objects
two-object prompts got; `shapes_drawn` counts, per named shape, what the object of the named
colour was drawn as (when exactly one object has that colour); `held_out_pairs`, per colour–shape
pair never seen in training, how many of the prompts naming it got an object of that colour and
shape, and the suite's overall score without those prompts (what the pair costs the whole
score). One JSON line per model.

    python benchmarks/failures.py --model shapes --model /work/runs/unet/model
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable

from common import guidance_fields

from latentdiff.cli.generate import add_sampling_options, sampling_request
from latentdiff.evaluation.adherence import generate_for_prompts
from latentdiff.evaluation.detector import Detection, detect
from latentdiff.evaluation.scoring import FAILURE_CRITERIA, failures, matches, score_image, tally
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.world.captions import parse_caption
from latentdiff.world.palette import HELD_OUT_PAIRS
from latentdiff.world.spec import PromptSpec

# Criteria that a prompt may or may not name; their shares count only the prompts naming them.
NAMED_BY = {
    "size": lambda spec: spec.objects[0].size is not None,
    "background": lambda spec: spec.background is not None,
    "position": lambda spec: spec.position is not None,
}


def breakdown(specs: list[PromptSpec], missed: list[set[str]]) -> dict:
    """Per kind: prompt count, share correct, and share missing each criterion."""
    result = {}
    for kind, criteria in FAILURE_CRITERIA.items():
        rows = [(s, m) for s, m in zip(specs, missed, strict=True) if s.kind == kind]
        shares = {}
        for criterion in criteria:
            named = [m for s, m in rows if NAMED_BY.get(criterion, lambda _: True)(s)]
            shares[criterion] = round(sum(criterion in m for m in named) / max(len(named), 1), 3)
        correct = sum(not m for _, m in rows) / max(len(rows), 1)
        result[kind] = {"prompts": len(rows), "correct": round(correct, 3), "missed": shares}
    result["missed_by_phrase"] = missed_by_phrase(specs, missed)
    return result


def missed_by_phrase(specs: list[PromptSpec], missed: list[set[str]]) -> dict[str, float]:
    """Per position phrase (single objects) and relation (two objects): the share of the
    prompts naming it, among those whose objects are all drawn right, that misplace them (a
    single object's position miss alone would also count a missing or wrong object)."""
    misses: dict[str, list[bool]] = {}
    for spec, m in zip(specs, missed, strict=True):
        if spec.position is not None and not m & {"count", "color", "shape"}:
            misses.setdefault(spec.position, []).append("position" in m)
        elif spec.relation is not None and not m & {"count", "shape", "binding"}:
            misses.setdefault(spec.relation, []).append("relation" in m)
    return {phrase: round(sum(m) / len(m), 3) for phrase, m in sorted(misses.items())}


def drawn(specs: list[PromptSpec], detections: list[Detection], missed: list[set[str]]) -> dict:
    """How two-object prompts are drawn: object counts, reversed relations, shapes drawn
    (`missed`: each prompt's `failures`, as `breakdown` takes them)."""
    counts: Counter[int] = Counter()
    shapes: dict[str, Counter[str]] = {}
    reversed_misses = []
    for spec, detection, m in zip(specs, detections, missed, strict=True):
        if spec.kind == "two_object":
            counts[len(detection.objects)] += 1
            if m == {"relation"}:
                reversed_misses.append(is_reversed(spec, detection))
        if spec.kind == "counting":
            continue
        for named in spec.objects:
            same_colour = [o for o in detection.objects if o.color == named.color]
            if len(same_colour) == 1:
                shapes.setdefault(named.shape, Counter())[same_colour[0].shape] += 1
    share = sum(reversed_misses) / max(len(reversed_misses), 1)
    return {
        "objects_drawn": dict(sorted(counts.items())),
        "relations_reversed": round(share, 3),
        "shapes_drawn": {named: dict(c) for named, c in sorted(shapes.items())},
    }


def is_reversed(spec: PromptSpec, detection: Detection) -> bool:
    """Whether the named objects stand in the opposite relation's direction (by centres)."""
    first, second = (
        next(o for o in detection.objects if matches(o, named)) for named in spec.objects
    )
    dx = second.center[0] - first.center[0]
    dy = second.center[1] - first.center[1]
    wanted = {"to the left of": dx, "to the right of": -dx, "above": dy, "below": -dy}
    return wanted[spec.relation] < 0


def held_out_pairs(specs: list[PromptSpec], detections: list[Detection]) -> dict:
    """Per held-out pair: prompts naming it, how many of their images hold an object of that
    colour and shape, and the overall score of the suite without those prompts."""
    results = [score_image(s, d) for s, d in zip(specs, detections, strict=True)]
    report = {}
    for pair in sorted(HELD_OUT_PAIRS):
        names = [has_pair(s.objects, pair) for s in specs]
        drawn = sum(has_pair(d.objects, pair) for d, n in zip(detections, names, strict=True) if n)
        rest = [r for r, named in zip(results, names, strict=True) if not named]
        report[" ".join(pair)] = {
            "prompts": sum(names),
            "drawn": drawn,
            "overall_without": round(tally(rest).overall, 3),
        }
    return report


def has_pair(objects: Iterable, pair: tuple[str, str]) -> bool:
    """Whether any of `objects` (named or detected) has this (colour, shape)."""
    return any((o.color, o.shape) == pair for o in objects)


def measure(model: str, args: argparse.Namespace) -> dict:
    prompts = evaluation_suite()[: args.limit]
    pipeline = load_pipeline(model, device=args.device)
    # with_defaults: so that the row names the guidance used
    request = sampling_request(args, prompts[0]).with_defaults(pipeline.sampling_defaults)
    images = generate_for_prompts(pipeline, prompts, request)
    specs = [parse_caption(p) for p in prompts]
    detections = [detect(i) for i in images]
    missed = [failures(s, d) for s, d in zip(specs, detections, strict=True)]
    return {
        "model": model,
        **guidance_fields(request),
        **breakdown(specs, missed),
        **drawn(specs, detections, missed),
        "held_out_pairs": held_out_pairs(specs, detections),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="repeatable")
    add_sampling_options(parser, seed=0, seed_help="image k uses seed+k")
    parser.add_argument("--limit", type=int, default=None, help="first N suite prompts")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for model in args.model:
        print(json.dumps(measure(model, args)), flush=True)


if __name__ == "__main__":
    main()
