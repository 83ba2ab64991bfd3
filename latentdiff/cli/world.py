"""`latentdiff world`: render Shapes World images, clips and curation videos with ground truth.

Each action writes its `--outdir` whole (`atomic_folder`): an interrupted run leaves the
previous folder or none, never a mix. An existing `--outdir` must be empty or a previous output
of the same action, which is replaced; a folder holding anything else (another action's output,
a user's file) is refused with one line and left untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from PIL import Image

from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_folder, write_json

MIN_SIZE = 16

# Per action: the file that marks its output, and a pattern every path in that output matches.
OUTPUTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "render": ("manifest.jsonl", re.compile(r"manifest\.jsonl|\d{5,}\.png")),
    "clip": ("clip.json", re.compile(r"clip\.json|\d{5,}\.png")),
    "curation-video": (
        "ground_truth.json",
        re.compile(r"ground_truth\.json|frames(/\d{5,}\.png)?"),
    ),
}


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
    parser.add_argument(
        "--outdir",
        required=True,
        help="output folder: new, empty, or a previous output of this action (replaced whole)",
    )
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


def _outdir(path: str, action: str) -> Path:
    """`--outdir`, checked before any work: new, empty, or a previous output of `action`."""
    outdir = Path(path)
    marker, pattern = OUTPUTS[action]
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"--outdir {path} is a file, not a folder")
    names = _paths_in(outdir, path) if outdir.is_dir() else []
    if names and (marker not in names or not all(pattern.fullmatch(name) for name in names)):
        raise UsageError(
            f"--outdir {path} holds files that are not a previous `world {action}` output; "
            "give a new or empty folder"
        )
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create --outdir {path}: {error.strerror}") from None
    if not os.access(outdir.parent, os.W_OK):
        raise UsageError(f"cannot write to --outdir {path}")
    # The folder is swapped, not written into: swap the real one if `path` is a symlink.
    return outdir.resolve()


def _paths_in(folder: Path, path: str) -> list[str]:
    """Every path inside `folder`, relative to it; unreadable is an error (never "empty")."""

    def fail(error: OSError) -> None:
        raise UsageError(f"cannot read --outdir {path}: {error.strerror}")

    names = []
    for root, dirs, files in os.walk(folder, onerror=fail):
        names += [(Path(root) / name).relative_to(folder).as_posix() for name in dirs + files]
    return names


def run_render(args: argparse.Namespace) -> None:
    from latentdiff.world.render import render_scene_image, scene_record
    from latentdiff.world.scenes import sample_scenes

    n = _int(args.n, "--n", 1)
    size = _int(args.size, "--size", MIN_SIZE)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir, "render")

    def write(folder: Path) -> None:
        lines = []
        for i, scene in enumerate(sample_scenes(n, seed, args.include_held_out)):
            name = f"{i:05d}.png"
            render_scene_image(scene, size).save(folder / name)
            lines.append(json.dumps({"file": name, **scene_record(scene, size)}))
        (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    atomic_folder(outdir, write, overwrite=True)
    print(f"wrote {n} images and manifest.jsonl to {args.outdir}")


def run_clip(args: argparse.Namespace) -> None:
    from latentdiff.world.video import clip_record, render_clip, sample_clip

    size = _int(args.size, "--size", MIN_SIZE)
    frames = _int(args.frames, "--frames", 2)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir, "clip")
    clip = sample_clip(seed, frames, size, args.include_held_out)

    def write(folder: Path) -> None:
        for t, frame in enumerate(render_clip(clip)):
            Image.fromarray(frame).save(folder / f"{t:05d}.png")
        write_json(folder / "clip.json", clip_record(clip))

    atomic_folder(outdir, write, overwrite=True)
    print(f"wrote {frames} frames and clip.json to {args.outdir}: {clip.caption}")


def run_curation_video(args: argparse.Namespace) -> None:
    from latentdiff.world.video import sample_curation_video, write_curation_video

    size = _int(args.size, "--size", MIN_SIZE)
    fps = _int(args.fps, "--fps", 1)
    shots = _int(args.shots, "--shots", 1)
    seed = _int(args.seed, "--seed", 0)
    outdir = _outdir(args.outdir, "curation-video")
    video = sample_curation_video(
        seed, size=size, fps=fps, n_shots=shots, include_held_out=args.include_held_out
    )
    write_curation_video(video, outdir, overwrite=True)
    print(f"wrote {video.n_frames} frames and ground_truth.json to {args.outdir}")
