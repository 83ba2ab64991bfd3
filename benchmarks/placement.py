"""Where a model puts a single object for each position phrase, with the same seeds for each.

For every phrase of WORLD.md's single-object positions, generates "a {colour} {shape} {phrase}"
for six colour–shape pairs × `--repeats` seeds (the same seeds for every phrase, so that only
the phrase differs) and reports how many images hold one object, how many of those are placed
as the phrase says (the position score), and those objects' mean centre and spread (64×64 units). A model that ignores
a phrase puts the object at the same mean centre as for the others. Then the text encoder's
view: the L2 distance between its outputs (all token states) for the phrases' prompts.

    python benchmarks/placement.py --model shapes [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from latentdiff.evaluation.detector import detect
from latentdiff.evaluation.scoring import score_image, tally
from latentdiff.pipelines.common import encode_prompt
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.pipelines.request import GenerationRequest
from latentdiff.world import palette
from latentdiff.world.captions import parse_caption

PAIRS = [(c, s) for c in ("red", "blue", "yellow") for s in ("circle", "triangle")]


def placement(pipeline, phrase: str, repeats: int, seed: int) -> str:
    prompts = [f"a {c} {s} {phrase}" for c, s in PAIRS for _ in range(repeats)]
    # Image k has seed `seed + k` for every phrase: only the phrase changes.
    images, _ = pipeline.generate(GenerationRequest(prompt=prompts, seed=seed))
    detections = [detect(np.asarray(image)) for image in images]
    centres = np.array([d.objects[0].center for d in detections if len(d.objects) == 1])
    results = [score_image(parse_caption(p), d) for p, d in zip(prompts, detections, strict=True)]
    placed = tally(results).accuracy["position"]
    if not len(centres):
        return f"{phrase:14s} no image holds exactly one object, position score {placed:.2f}"
    mean, spread = centres.mean(axis=0), centres.std(axis=0)
    return (
        f"{phrase:14s} one object in {len(centres)}/{len(prompts)}, position score "
        f"{placed:.2f}, mean centre ({mean[0]:.1f}, {mean[1]:.1f}), spread "
        f"({spread[0]:.1f}, {spread[1]:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per colour–shape pair")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    pipeline = load_pipeline(args.model, device=args.device)
    for phrase in palette.POSITIONS:
        print(placement(pipeline, phrase, args.repeats, args.seed), flush=True)
    prompts = [f"a red circle {phrase}" for phrase in palette.POSITIONS]
    prompts += ["a red circle", "a blue circle on the left"]
    with torch.no_grad():
        states = encode_prompt(pipeline.components, prompts).flatten(1)
    print("text encoder: L2 distance between the prompts' token states")
    for prompt, row in zip(prompts, torch.cdist(states, states), strict=True):
        print(f"  {prompt:28s} " + " ".join(f"{d:5.1f}" for d in row.tolist()))


if __name__ == "__main__":
    main()
