"""Videos of the Shapes World: short captioned clips, and long shot sequences for curation.

A moving clip's first object moves at constant velocity, 2–4 reference px per frame along
the direction its caption names (`a red circle moving left`); an optional second object
moves at its own constant velocity in any direction. Objects bounce elastically off the
canvas edges and keep MIN_GAP between bounding boxes in every frame. The captioned object
starts where its whole path fits the canvas when it can, so that short clips show the named
motion without a bounce.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from latentdiff.fileio import atomic_folder, write_json
from latentdiff.world import palette
from latentdiff.world.captions import canonical_caption, motion_spec
from latentdiff.world.render import object_record, render_scene_image
from latentdiff.world.rng import as_generator, pick
from latentdiff.world.scenes import (
    Scene,
    SceneObject,
    allowed_pairs,
    extents,
    jittered_side,
    sample_scene,
    sample_spec,
)

SPEED_RANGE = (2.0, 4.0)  # reference px per frame
P_STILL = 0.25
P_SECOND_OBJECT = 0.5
DIRECTION_VECTORS = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
SECOND_OBJECT_TRIES = 20


@dataclass(frozen=True)
class Clip:
    """Per-frame objects (reference units) of one clip; `direction` is None for a still clip."""

    background: str
    frames: tuple[tuple[SceneObject, ...], ...]
    caption: str
    direction: str | None
    size: int = 64

    def scene(self, t: int) -> Scene:
        return Scene(self.background, self.frames[t], self.caption, self.caption)

    @property
    def centers(self) -> np.ndarray:
        """(F, objects, 2) centres of mass in reference units: the motion ground truth."""
        return np.array([[obj.center for obj in objects] for objects in self.frames])


def sample_clip(
    rng_or_seed: np.random.Generator | int,
    frames: int = 8,
    size: int = 64,
    include_held_out: bool = False,
    *,
    p_still: float = P_STILL,
    background: str | None = None,
) -> Clip:
    """A moving clip (one or two objects) or, with probability `p_still`, a still scene."""
    rng = as_generator(rng_or_seed)
    background = background or pick(rng, tuple(palette.BACKGROUND_COLORS))
    if rng.random() < p_still:
        return _still_clip(rng, frames, size, include_held_out, background)
    pairs = allowed_pairs(include_held_out)
    color, shape = pick(rng, pairs)
    direction = pick(rng, palette.MOTION_DIRECTIONS)
    first = _captioned_track(rng, color, shape, direction, frames)
    tracks = [first]
    if rng.random() < P_SECOND_OBJECT:
        others = [pair for pair in pairs if pair != (color, shape)]
        second = _second_track(rng, others, first, frames)
        tracks += [second] if second is not None else []
    caption = canonical_caption(motion_spec(color, shape, direction))
    per_frame = tuple(zip(*tracks, strict=True))
    return Clip(background, per_frame, caption, direction, size)


def _still_clip(
    rng: np.random.Generator, frames: int, size: int, include_held_out: bool, background: str
) -> Clip:
    spec = sample_spec(rng, include_held_out)
    if spec.background is not None:  # a caption that names the background names this one
        spec = replace(spec, background=background)
    scene = sample_scene(spec, rng)
    return Clip(background, (scene.objects,) * frames, scene.canonical_caption, None, size)


def _sample_size(rng: np.random.Generator) -> tuple[str, float]:
    """A free size word and its jittered side: clip captions name no size."""
    size = pick(rng, palette.SIZES)
    return size, jittered_side(size, rng)


def _center_range(shape: str, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centre (x, y) that keep the object inside the canvas."""
    left, top, right, bottom = extents(shape, side)
    lo = np.array([left, top])
    hi = np.array([palette.REFERENCE_SIZE - right, palette.REFERENCE_SIZE - bottom])
    return lo, hi


def bounce(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold free straight-line positions into [lo, hi]: elastic bounces off the walls."""
    span = hi - lo
    u = np.mod(positions - lo, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def _track(
    color: str,
    shape: str,
    size: str,
    side: float,
    start: np.ndarray,
    velocity: np.ndarray,
    frames: int,
) -> tuple[SceneObject, ...]:
    lo, hi = _center_range(shape, side)
    free = start + np.arange(frames)[:, None] * velocity  # (F, 2)
    centers = bounce(free, lo, hi)
    return tuple(SceneObject(color, shape, size, (float(x), float(y)), side) for x, y in centers)


def _captioned_track(
    rng: np.random.Generator, color: str, shape: str, direction: str, frames: int
) -> tuple[SceneObject, ...]:
    """The first object: axis-aligned motion, starting where its path fits when possible."""
    size, side = _sample_size(rng)
    lo, hi = _center_range(shape, side)
    unit = np.array(DIRECTION_VECTORS[direction])
    speed = rng.uniform(*SPEED_RANGE)
    travel = speed * (frames - 1)
    start = rng.uniform(lo, hi)
    axis = 0 if unit[0] != 0 else 1
    low, high = lo[axis], hi[axis]
    if unit[axis] > 0:
        start[axis] = rng.uniform(low, max(low, high - travel))
    else:
        start[axis] = rng.uniform(min(high, low + travel), high)
    return _track(color, shape, size, side, start, speed * unit, frames)


def _second_track(
    rng: np.random.Generator,
    pairs: Sequence[tuple[str, str]],
    first: tuple[SceneObject, ...],
    frames: int,
) -> tuple[SceneObject, ...] | None:
    """Another object moving in any direction that never comes within MIN_GAP of the first."""
    first_boxes = np.array([obj.bbox for obj in first])  # (F, 4)
    for _ in range(SECOND_OBJECT_TRIES):
        color, shape = pick(rng, pairs)
        size, side = _sample_size(rng)
        lo, hi = _center_range(shape, side)
        angle = rng.uniform(0, 2 * math.pi)
        velocity = rng.uniform(*SPEED_RANGE) * np.array([math.cos(angle), math.sin(angle)])
        track = _track(color, shape, size, side, rng.uniform(lo, hi), velocity, frames)
        if _always_apart(first_boxes, np.array([obj.bbox for obj in track])):
            return track
    return None


def _always_apart(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether boxes a[t] and b[t] (x0, y0, x1, y1) keep MIN_GAP apart in every frame t."""
    gap = palette.MIN_GAP
    apart = (
        (a[:, 0] >= b[:, 2] + gap)
        | (b[:, 0] >= a[:, 2] + gap)
        | (a[:, 1] >= b[:, 3] + gap)
        | (b[:, 1] >= a[:, 3] + gap)
    )
    return bool(apart.all())


def render_clip(clip: Clip, size: int | None = None) -> np.ndarray:
    """The clip as (F, H, W, 3) uint8 frames, at `size` (default: the clip's own)."""
    size = size or clip.size
    frames = np.empty((len(clip.frames), size, size, 3), dtype=np.uint8)
    for t in range(len(clip.frames)):
        frames[t] = render_scene_image(clip.scene(t), size)
    return frames


def clip_record(clip: Clip, size: int | None = None) -> dict:
    """A clip's caption and per-frame objects in pixels of a `size` rendering."""
    size = size or clip.size
    return {
        "caption": clip.caption,
        "direction": clip.direction,
        "background": clip.background,
        "size": size,
        "frames": [[object_record(obj, size) for obj in objects] for objects in clip.frames],
    }


# Long videos for data curation -----------------------------------------------------------

OVERLAY_WORDS = ("SALE", "HELLO", "NEWS", "LIVE", "WATCH NOW", "SUBSCRIBE", "FREE", "TOP 10")
P_STILL_SHOT = 0.4
P_TEXT = 0.3
P_MISMATCHED = 0.25


@dataclass(frozen=True)
class TextOverlay:
    """Text drawn over a whole shot: string, font size, origin and pixel bbox (x0, y0, x1, y1)."""

    text: str
    font_size: int
    origin: tuple[int, int]
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Shot:
    """One shot of a curation video, starting at frame `start`, with its ground truth."""

    start: int
    clip: Clip
    overlay: TextOverlay | None
    shown_caption: str

    @property
    def end(self) -> int:
        return self.start + len(self.clip.frames)

    @property
    def moving(self) -> bool:
        return self.clip.direction is not None

    @property
    def mismatched(self) -> bool:
        return self.shown_caption != self.clip.caption


@dataclass(frozen=True)
class CurationVideo:
    """A sequence of shots joined by hard cuts; cuts are the first frames of shots 2…n."""

    size: int
    fps: int
    shots: tuple[Shot, ...]

    @property
    def n_frames(self) -> int:
        return self.shots[-1].end

    @property
    def cut_frames(self) -> list[int]:
        return [shot.start for shot in self.shots[1:]]


def sample_curation_video(
    seed: int,
    size: int = 256,
    fps: int = 24,
    min_shot_seconds: float = 1.0,
    max_shot_seconds: float = 6.0,
    n_shots: int = 6,
    include_held_out: bool = False,
) -> CurationVideo:
    """Shots of 1–6 s; some still, some with text over them, some with a wrong caption.

    Each shot's background differs from the previous one's, so every cut changes most of the
    frame, as a cut between two real scenes does.
    """
    rng = np.random.default_rng(seed)
    shots: list[Shot] = []
    start, previous_background = 0, None
    for _ in range(n_shots):
        frames = max(1, round(rng.uniform(min_shot_seconds, max_shot_seconds) * fps))
        backgrounds = tuple(b for b in palette.BACKGROUND_COLORS if b != previous_background)
        clip = sample_clip(
            rng,
            frames,
            size,
            include_held_out,
            p_still=P_STILL_SHOT,
            background=pick(rng, backgrounds),
        )
        overlay = _sample_overlay(rng, size) if rng.random() < P_TEXT else None
        shown = clip.caption
        if rng.random() < P_MISMATCHED:
            shown = _other_caption(rng, clip.caption, include_held_out)
        shots.append(Shot(start, clip, overlay, shown))
        start, previous_background = start + frames, clip.background
    return CurationVideo(size, fps, tuple(shots))


def _other_caption(rng: np.random.Generator, caption: str, include_held_out: bool) -> str:
    """A canonical caption of another prompt: the wrong text a CLIP filter should reject."""
    while True:
        other = canonical_caption(sample_spec(rng, include_held_out))
        if other != caption:
            return other


MIN_FONT_SIZE = 6


@functools.lru_cache(maxsize=64)
def overlay_font(font_size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=font_size)


def _stroke_width(font_size: int) -> int:
    """A dark outline keeps white text legible on every background, white included."""
    return max(1, font_size // 16)


def _text_bbox(text: str, font_size: int) -> tuple[int, int, int, int]:
    return overlay_font(font_size).getbbox(text, stroke_width=_stroke_width(font_size))


def _fitting_font_size(text: str, size: int) -> int:
    """An eighth of the frame height (large text), smaller when the text would not fit."""
    font_size = max(MIN_FONT_SIZE, size // 8)
    while font_size > MIN_FONT_SIZE:
        x0, _, x1, _ = _text_bbox(text, font_size)
        if x1 - x0 <= size:
            break
        font_size -= 1
    return font_size


def _sample_overlay(rng: np.random.Generator, size: int) -> TextOverlay:
    """Text at a random place where it fits (clipped to the frame only when it cannot)."""
    text = pick(rng, OVERLAY_WORDS)
    font_size = _fitting_font_size(text, size)
    x0, y0, x1, y1 = _text_bbox(text, font_size)
    x = int(rng.integers(-x0, max(-x0, size - x1) + 1))
    y = int(rng.integers(-y0, max(-y0, size - y1) + 1))
    bbox = (max(0, x + x0), max(0, y + y0), min(size, x + x1), min(size, y + y1))
    return TextOverlay(text, font_size, (x, y), bbox)


def render_curation_video(video: CurationVideo) -> Iterator[np.ndarray]:
    """The video's frames, one (size, size, 3) uint8 array at a time."""
    for shot in video.shots:
        for t in range(len(shot.clip.frames)):
            image = render_scene_image(shot.clip.scene(t), video.size)
            if shot.overlay is not None:
                _draw_overlay(image, shot.overlay)
            yield np.asarray(image)


def _draw_overlay(image: Image.Image, overlay: TextOverlay) -> None:
    ImageDraw.Draw(image).text(
        overlay.origin,
        overlay.text,
        fill=(255, 255, 255),
        font=overlay_font(overlay.font_size),
        stroke_width=_stroke_width(overlay.font_size),
        stroke_fill=(0, 0, 0),
    )


def curation_ground_truth(video: CurationVideo) -> dict:
    """What a curation pipeline should find: cuts, still shots, text, mismatched captions."""
    shots = [
        {
            "start": shot.start,
            "end": shot.end,
            "moving": shot.moving,
            "direction": shot.clip.direction,
            "text": None
            if shot.overlay is None
            else {"text": shot.overlay.text, "bbox": list(shot.overlay.bbox)},
            "true_caption": shot.clip.caption,
            "shown_caption": shot.shown_caption,
            "mismatched": shot.mismatched,
        }
        for shot in video.shots
    ]
    return {
        "size": video.size,
        "fps": video.fps,
        "n_frames": video.n_frames,
        "cut_frames": video.cut_frames,
        "shots": shots,
    }


def write_curation_video(
    video: CurationVideo, directory: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the folder `directory` whole: `frames/00000.png …` and `ground_truth.json`; return it.

    Written beside it and swapped in (`atomic_folder`): an interrupted write leaves the previous
    folder or none. `directory` must be absent or empty unless `overwrite`, which replaces it
    and all it holds. Frames are PNG files for now: a video-file writer (PyAV/imageio-ffmpeg)
    comes with the curation stage, in a later issue, and will write `video.mp4` beside the same
    ground truth.
    """

    def write(folder: Path) -> None:
        (folder / "frames").mkdir()
        for i, frame in enumerate(render_curation_video(video)):
            Image.fromarray(frame).save(folder / "frames" / f"{i:05d}.png")
        write_json(folder / "ground_truth.json", curation_ground_truth(video))

    directory = Path(directory)
    atomic_folder(directory, write, overwrite=overwrite)
    return directory
