"""`latentdiff world`: render Shapes World images, clips and curation videos with ground truth."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from PIL import Image

from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_write, write_json

MIN_SIZE = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "world",
        help="render Shapes World images and videos with ground truth",
        description="Render the Shapes World (WORLD.md): captioned images, clips and long "
        "videos, with their ground truth beside them.",
    )
    actions = parser.add_subparsers(dest="world_command", metavar="ACTION", required=True)

    render = actions.add_parser(
        "render",
        help="images + manifest.jsonl",
        description="Write 00000.png, 00001.png, … and manifest.jsonl (one JSON object per "
        "image: file, caption, canonical_caption, background, objects with centre and bbox "
        "in pixels).",
    )
    render.add_argument("--n", default=100, help="number of images (default 100)")
    render.add_argument("--size", default=64, help=f"pixels per side, at least {MIN_SIZE}")
    _add_common(render)
    render.set_defaults(func=run_render)

    clip = actions.add_parser(
        "clip",
        help="one clip: frame PNGs + clip.json",
        description="Write the frames of one clip as 00000.png, … and clip.json (caption, "
        "direction, per-frame object centres and bboxes in pixels).",
    )
    clip.add_argument("--size", default=64, help=f"pixels per side, at least {MIN_SIZE}")
    clip.add_argument("--frames", default=8, help="number of frames (default 8)")
    _add_common(clip)
    clip.set_defaults(func=run_clip)

    video = actions.add_parser(
        "curation-video",
        help="a long video of shots for data curation",
        description="Write a long video (shots of 1–6 s joined by hard cuts) as "
        "frames/00000.png, … and ground_truth.json (cuts, still shots, text, captions).",
    )
    video.add_argument("--size", default=256, help="pixels per side (default 256)")
    video.add_argument("--fps", default=24, help="frames per second (default 24)")
    video.add_argument("--shots", default=6, help="number of shots (default 6)")
    _add_common(video)
    video.set_defaults(func=run_curation_video)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", default=0, help="random seed: same seed, same output")
    parser.add_argument("--outdir", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--include-held-out",
        action="store_true",
        help="allow the held-out colour–shape pairs (evaluation data only)",
    )


def _int(value: object, flag: str, minimum: int) -> int:
    """Validate here, not with argparse `type=`, so bad input is one line and exit status 2."""
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"{flag} must be an integer, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {number}")
    return number


def _outdir(path: str) -> Path:
    outdir = Path(path)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create --outdir {path}: {error.strerror}") from None
    if not os.access(outdir, os.W_OK):
        raise UsageError(f"cannot write to --outdir {path}")
    return outdir


def run_render(args: argparse.Namespace) -> None:
    from latentdiff.world.render import render_scene_image, scene_record
    from latentdiff.world.scenes import sample_scenes

    n = _int(args.n, "--n", 1)
    size = _int(args.size, "--size", MIN_SIZE)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir)
    lines = []
    try:
        for i, scene in enumerate(sample_scenes(n, seed, args.include_held_out)):
            name = f"{i:05d}.png"
            render_scene_image(scene, size).save(outdir / name)
            lines.append(json.dumps({"file": name, **scene_record(scene, size)}))
        # The manifest goes last: its presence says the folder is complete.
        manifest = "\n".join(lines) + "\n"
        atomic_write(outdir / "manifest.jsonl", lambda tmp: tmp.write_text(manifest))
    except OSError as error:
        raise UsageError(f"cannot write to --outdir {outdir}: {error.strerror}") from None
    print(f"wrote {n} images and manifest.jsonl to {outdir}")


def run_clip(args: argparse.Namespace) -> None:
    from latentdiff.world.video import clip_record, render_clip, sample_clip

    size = _int(args.size, "--size", MIN_SIZE)
    frames = _int(args.frames, "--frames", 2)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir)
    clip = sample_clip(seed, frames, size, args.include_held_out)
    try:
        for t, frame in enumerate(render_clip(clip)):
            Image.fromarray(frame).save(outdir / f"{t:05d}.png")
        write_json(outdir / "clip.json", clip_record(clip))
    except OSError as error:
        raise UsageError(f"cannot write to --outdir {outdir}: {error.strerror}") from None
    print(f"wrote {frames} frames and clip.json to {outdir}: {clip.caption}")


def run_curation_video(args: argparse.Namespace) -> None:
    from latentdiff.world.video import sample_curation_video, write_curation_video

    size = _int(args.size, "--size", MIN_SIZE)
    fps = _int(args.fps, "--fps", 1)
    shots = _int(args.shots, "--shots", 1)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir)
    video = sample_curation_video(
        seed, size=size, fps=fps, n_shots=shots, include_held_out=args.include_held_out
    )
    try:
        write_curation_video(video, outdir)
    except OSError as error:
        raise UsageError(f"cannot write to --outdir {outdir}: {error.strerror}") from None
    print(f"wrote {video.n_frames} frames and ground_truth.json to {outdir}")
