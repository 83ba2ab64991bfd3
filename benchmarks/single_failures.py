"""Why single-object prompts fail: the share of them missing each criterion, per model.

Generates every single-object prompt of the evaluation suite, each with the seed of its index
in the suite (as `latentdiff evaluate model` seeds it, so these are the very images its `single`
score judged), and counts, per criterion (object count, colour, shape, size
when named, background when named), the share of prompts that miss it. "background" is a
share of the prompts that name one. One JSON line per model.

    python benchmarks/single_failures.py --model shapes --model /work/runs/unet/model
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from latentdiff.evaluation.adherence import generate_for_prompts
from latentdiff.evaluation.detector import detect
from latentdiff.evaluation.scoring import SINGLE_CRITERIA, single_failures
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.pipelines.request import GenerationRequest
from latentdiff.world.captions import parse_caption


def measure(model: str, args: argparse.Namespace) -> dict:
    singles = [
        (k, p) for k, p in enumerate(evaluation_suite()) if parse_caption(p).kind == "single"
    ]
    request = GenerationRequest(
        prompt="",
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        sampler=args.sampler,
    )
    pipeline = load_pipeline(model, device=args.device)
    prompts = [p for _, p in singles]
    images = [
        generate_for_prompts(pipeline, [prompt], replace(request, seed=k))[0]
        for k, prompt in singles
    ]
    specs = [parse_caption(p) for p in prompts]
    failures = [single_failures(s, detect(i)) for s, i in zip(specs, images, strict=True)]
    named = {
        "size": [s.objects[0].size is not None for s in specs],
        "background": [s.background is not None for s in specs],
    }
    shares = {}
    for criterion in SINGLE_CRITERIA:
        counted = named.get(criterion, [True] * len(specs))
        missed = sum(c and criterion in f for c, f in zip(counted, failures, strict=True))
        shares[criterion] = round(missed / max(sum(counted), 1), 3)
    return {
        "model": model,
        "prompts": len(prompts),
        "single": round(sum(not f for f in failures) / len(prompts), 3),
        "missed": shares,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="repeatable")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for model in args.model:
        print(json.dumps(measure(model, args)), flush=True)


if __name__ == "__main__":
    main()
