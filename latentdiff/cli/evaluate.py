"""`latentdiff evaluate`: measure prompt adherence (GenEval-style) and print the prompt suite.

`evaluate adherence --prompts FILE --images DIR` pairs the prompts (one per non-empty line,
as `generate --prompts-file` reads them) with DIR/00000.png, 00001.png, … in order; with
`--images-per-prompt K` (generate's `--num-images K`) prompt i owns images iK … iK+K-1.
Images below MIN_IMAGE_SIZE px per side are refused, below RELIABLE_IMAGE_SIZE warned about:
the detector is not accurate enough on them (see `latentdiff.evaluation.detector`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from latentdiff.cli.generate import (  # the same prompt lines and sampling flags as `generate`
    add_sampling_options,
    read_prompts,
    sampling_request,
)
from latentdiff.errors import UsageError
from latentdiff.evaluation.detector import MIN_IMAGE_SIZE, RELIABLE_IMAGE_SIZE
from latentdiff.evaluation.scoring import CATEGORIES, Report, score
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.fileio import atomic_write
from latentdiff.world.captions import parse_caption

NUMBERED_PNG = re.compile(r"^\d{5,}\.png$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure prompt adherence of generated images",
        description="Score generated images against their prompts (Shapes World, GenEval-style).",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    adherence = tasks.add_parser(
        "adherence",
        help="score images against their prompts",
        description="Score DIR/00000.png, 00001.png, … against the prompt lines in order: "
        "single, counting, two_object, color_binding, position, held_out and overall.",
    )
    adherence.add_argument(
        "--prompts", required=True, metavar="FILE", help="text file, one prompt per line"
    )
    adherence.add_argument(
        "--images", required=True, metavar="DIR", help="folder of 00000.png, 00001.png, …"
    )
    adherence.add_argument(
        "--images-per-prompt",
        type=int,
        default=1,
        metavar="K",
        help="images per prompt (generate's --num-images)",
    )
    adherence.add_argument("--json", action="store_true", help="print one JSON object")
    adherence.set_defaults(func=run_adherence)

    model = tasks.add_parser(
        "model",
        help="generate the prompt suite with a model and score it",
        description="Generate one image per suite prompt (image k with seed+k) and score "
        "prompt adherence; the figure the model card reports.",
    )
    model.add_argument("--model", default="shapes", help="bundled model name or model folder")
    add_sampling_options(model, seed=0, seed_help="image k uses seed+k")
    model.add_argument("--limit", type=int, default=None, help="score only the first N prompts")
    model.add_argument("--prompts", default=None, metavar="FILE", help="instead of the suite")
    model.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    model.add_argument("--json", action="store_true", help="print one JSON object")
    model.set_defaults(func=run_model)

    suite = tasks.add_parser(
        "suite",
        help="print or write the evaluation prompt suite",
        description="The fixed suite of canonical evaluation prompts, one per line.",
    )
    suite.add_argument("--output", default=None, help="write to this file instead of stdout")
    suite.set_defaults(func=run_suite)


def run_adherence(args: argparse.Namespace) -> None:
    if args.images_per_prompt < 1:
        raise UsageError(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    prompts = read_prompts(Path(args.prompts))
    warn_unparseable(prompts)
    per_image = [p for p in prompts for _ in range(args.images_per_prompt)]
    paths = image_paths(Path(args.images), len(per_image))
    report = score(per_image, load_images(paths))
    print(json.dumps(report.to_dict()) if args.json else format_table(report))


def run_model(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from latentdiff.config import SamplingConfig
    from latentdiff.diffusion.samplers import SAMPLERS
    from latentdiff.evaluation.adherence import evaluate_adherence
    from latentdiff.pipelines.pipeline import load_pipeline

    prompts = read_prompts(Path(args.prompts)) if args.prompts else evaluation_suite()
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {args.limit}")
        prompts = prompts[: args.limit]
    warn_unparseable(prompts)  # before the model loads and generates for them
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    request = sampling_request(args, prompts[0])
    request.validate(1, tuple(SAMPLERS))
    pipeline = load_pipeline(args.model, device=args.device)
    sample_size = pipeline.components.config.sample_size
    width, height = args.width or sample_size, args.height or sample_size
    what = "--width × --height" if args.width or args.height else f"model {args.model}'s size"
    warning = image_size_warning(width, height, what)  # before generating
    if warning:
        print(warning, file=sys.stderr)
    with tqdm(total=len(prompts), unit="image", disable=None) as bar:
        report = evaluate_adherence(
            pipeline, prompts, request, batch_size=args.batch_size, on_batch=bar.update
        )
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    used = request.with_defaults(pipeline.sampling_defaults)
    guidance = SamplingConfig(used.guidance_scale, used.guidance_rescale, used.guidance_interval)
    print(f"{len(prompts)} prompts, {used.sampler} {used.num_inference_steps} steps, {guidance}")
    print(format_table(report))


def warn_unparseable(prompts: list[str]) -> None:
    """One warning per prompt that does not parse (it counts wrong); an error if none parses."""
    for number, reason in unparseable(prompts):
        print(
            f"latentdiff evaluate: warning: prompt {number} counted wrong: {reason}",
            file=sys.stderr,
        )


def unparseable(prompts: list[str]) -> list[tuple[int, str]]:
    """(1-based number, reason) of each prompt that does not parse; an error if none parses,
    since then the file is no prompt list at all."""
    bad = []
    for number, prompt in enumerate(prompts, 1):
        try:
            parse_caption(prompt)
        except UsageError as error:
            bad.append((number, str(error)))
    if len(bad) == len(prompts):
        raise UsageError(f"no prompt in the file parses; the first: {bad[0][1]}")
    return bad


def image_paths(folder: Path, n: int) -> list[Path]:
    """DIR/00000.png … for `n` images; exactly these numbered PNGs must be there."""
    if not folder.is_dir():
        raise UsageError(f"image folder {folder} does not exist")
    expected = [folder / f"{k:05d}.png" for k in range(n)]
    numbered = {p.name for p in folder.iterdir() if NUMBERED_PNG.match(p.name)}
    missing = [p for p in expected if p.name not in numbered]
    if missing:
        raise UsageError(f"{len(numbered)} numbered images for {n} expected; missing {missing[0]}")
    if len(numbered) > n:
        raise UsageError(f"{len(numbered)} numbered images in {folder} for {n} expected")
    return expected


def load_images(paths: list[Path]) -> Iterator[np.ndarray]:
    """Each file as an (H, W, 3) uint8 RGB array, read only when the scorer gets to it; an
    image too small for the detector is refused, the first one below its reliable size warned
    about."""
    warned = False
    for path in paths:
        try:
            with Image.open(path) as image:
                warning = image_size_warning(*image.size, str(path))
                if warning and not warned:
                    print(warning, file=sys.stderr)
                    warned = True
                array = np.asarray(image.convert("RGB"))
        # A header declaring a huge image raises DecompressionBombError, not an OSError.
        except (OSError, Image.DecompressionBombError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from None
        yield array


def image_size_warning(width: int, height: int, what: str) -> str | None:
    """Raise UsageError for an image too small for the detector; the warning to print for one
    near its limit (MIN_IMAGE_SIZE, RELIABLE_IMAGE_SIZE); None for any larger one."""
    side = min(width, height)
    if side < MIN_IMAGE_SIZE:
        raise UsageError(
            f"{what} is {width}×{height} px, too small to judge: the detector needs at least "
            f"{MIN_IMAGE_SIZE} px per side (WORLD.md's ≥ 99.5 % on ground truth)"
        )
    if side < RELIABLE_IMAGE_SIZE:
        return (
            f"latentdiff evaluate: warning: {what} is {width}×{height} px, near the detector's "
            f"limit: below {RELIABLE_IMAGE_SIZE} px per side it misjudges up to 0.5 % of ground truth"
        )
    return None


def format_table(report: Report) -> str:
    """Accuracy per category as an aligned table, `overall` last."""
    lines = [f"{'category':<14} {'accuracy':>8}  {'correct':>9}"]
    for category in CATEGORIES:
        accuracy = report.accuracy[category]
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        counts = f"{report.correct[category]}/{report.total[category]}"
        lines.append(f"{category:<14} {shown:>8}  {counts:>9}")
    overall = "-" if report.overall is None else f"{report.overall:.3f}"
    lines.append(f"{'overall':<14} {overall:>8}")
    return "\n".join(lines)


def run_suite(args: argparse.Namespace) -> None:
    text = "\n".join(evaluation_suite()) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return
    atomic_write(args.output, lambda tmp: tmp.write_text(text))
