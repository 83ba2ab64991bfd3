import itertools
import json

import numpy as np
import pytest

from latentdiff.errors import UsageError
from latentdiff.world import palette
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.video import (
    DIRECTION_VECTORS,
    bounce,
    curation_ground_truth,
    render_clip,
    render_curation_video,
    sample_clip,
    sample_curation_video,
    write_curation_video,
)


def _gap(a, b):
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _check_frames_obey_the_world(clip):
    for objects in clip.frames:
        for obj in objects:
            x0, y0, x1, y1 = obj.bbox
            assert -1e-9 <= x0 and -1e-9 <= y0 and x1 <= 64 + 1e-9 and y1 <= 64 + 1e-9
        for a, b in itertools.combinations(objects, 2):
            assert _gap(a.bbox, b.bbox) >= palette.MIN_GAP - 1e-9


def test_sample_clip_is_deterministic_from_a_seed():
    assert sample_clip(3) == sample_clip(3)
    assert sample_clip(3) == sample_clip(np.random.default_rng(3))
    assert any(sample_clip(3) != sample_clip(seed) for seed in range(4, 8))


def test_moving_clip_moves_2_to_4_px_per_frame_in_the_named_direction():
    rng = np.random.default_rng(0)
    for _ in range(200):
        clip = sample_clip(rng, p_still=0.0)
        spec = parse_caption(clip.caption)
        first = clip.frames[0][0]
        assert spec.motion == clip.direction
        assert (spec.objects[0].color, spec.objects[0].shape) == (first.color, first.shape)
        steps = np.diff(clip.centers[:, 0], axis=0)  # (F-1, 2), first object
        along = steps @ np.array(DIRECTION_VECTORS[clip.direction])
        assert ((along >= 2.0 - 1e-9) & (along <= 4.0 + 1e-9)).all()  # 8 frames: no bounce
        np.testing.assert_allclose(along, along[0])
        np.testing.assert_allclose(np.linalg.norm(steps, axis=1), along)
        _check_frames_obey_the_world(clip)
    assert clip.centers.shape[0] == 8


def test_long_clips_bounce_off_the_edges_at_constant_speed():
    reversed_any = False
    for seed in range(20):
        clip = sample_clip(seed, frames=60, p_still=0.0)
        _check_frames_obey_the_world(clip)
        speeds = np.linalg.norm(np.diff(clip.centers, axis=0), axis=-1)  # (F-1, objects)
        assert (speeds <= 4.0 + 1e-9).all()
        assert (np.median(speeds, axis=0) >= 2.0 - 1e-9).all()
        along = np.diff(clip.centers[:, 0], axis=0) @ np.array(DIRECTION_VECTORS[clip.direction])
        assert along[0] > 0
        reversed_any |= bool((along < 0).any())
    assert reversed_any


def test_bounce_reflects_into_the_range():
    lo, hi = np.array([0.0]), np.array([10.0])
    positions = np.array([[3.0], [12.0], [21.0], [-4.0]])
    np.testing.assert_allclose(bounce(positions, lo, hi), [[3.0], [8.0], [1.0], [4.0]])


def test_still_clips_repeat_one_scene_with_a_still_caption():
    clip = sample_clip(1, frames=5, p_still=1.0)
    assert clip.direction is None
    assert len(set(clip.frames)) == 1 and len(clip.frames) == 5
    assert parse_caption(clip.caption).motion is None
    frames = render_clip(clip, 32)
    assert frames.shape == (5, 32, 32, 3)
    assert (frames == frames[0]).all()


def test_moving_clip_frames_differ_and_render_at_the_clip_size():
    clip = sample_clip(2, frames=4, size=40, p_still=0.0)
    frames = render_clip(clip)
    assert frames.shape == (4, 40, 40, 3) and frames.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))


def test_clips_exclude_held_out_pairs_unless_asked():
    rng = np.random.default_rng(4)
    pairs = {(o.color, o.shape) for _ in range(500) for o in sample_clip(rng, frames=2).frames[0]}
    assert not pairs & palette.HELD_OUT_PAIRS
    rng = np.random.default_rng(4)
    pairs = {
        (o.color, o.shape)
        for _ in range(500)
        for o in sample_clip(rng, frames=2, include_held_out=True).frames[0]
    }
    assert pairs & palette.HELD_OUT_PAIRS


@pytest.fixture(scope="module")
def video_and_frames():
    video = sample_curation_video(seed=0, size=96, fps=6, n_shots=24)
    return video, np.stack(list(render_curation_video(video)))


def test_curation_cuts_are_the_shot_boundaries(video_and_frames):
    video, frames = video_and_frames
    assert video.cut_frames == [shot.start for shot in video.shots[1:]]
    assert video.shots[0].start == 0
    for previous, shot in itertools.pairwise(video.shots):
        assert shot.start == previous.end
        assert shot.clip.background != previous.clip.background
    for shot in video.shots:
        assert 6 <= shot.end - shot.start <= 36  # 1–6 s at 6 fps
    assert len(frames) == video.n_frames
    changes = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert set(np.flatnonzero(changes > 20) + 1) == set(video.cut_frames)


def test_curation_shot_flags_match_the_frames(video_and_frames):
    video, frames = video_and_frames
    assert {shot.moving for shot in video.shots} == {True, False}
    assert {shot.mismatched for shot in video.shots} == {True, False}
    assert any(shot.overlay for shot in video.shots) and not all(s.overlay for s in video.shots)
    for shot in video.shots:
        clip_frames = frames[shot.start : shot.end]
        assert (clip_frames == clip_frames[0]).all() != shot.moving
        assert shot.mismatched == (shot.shown_caption != shot.clip.caption)
        parse_caption(shot.shown_caption)
        if shot.overlay:
            x0, y0, x1, y1 = shot.overlay.bbox
            assert 0 <= x0 < x1 <= video.size and 0 <= y0 < y1 <= video.size
            changed = (clip_frames[0] != render_scene(shot.clip.scene(0), video.size)).any(-1)
            assert changed[y0:y1, x0:x1].mean() > 0.1  # text covers its box …
            changed[y0:y1, x0:x1] = False
            assert not changed.any()  # … and nothing outside it


def test_write_curation_video_writes_frames_and_ground_truth(tmp_path):
    video = sample_curation_video(seed=1, size=24, fps=2, n_shots=3)
    write_curation_video(video, tmp_path)
    assert len(list((tmp_path / "frames").glob("*.png"))) == video.n_frames
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth == json.loads(json.dumps(curation_ground_truth(video)))
    assert truth["cut_frames"] == [shot["start"] for shot in truth["shots"][1:]]
    assert not list(tmp_path.glob("*.partial"))


def test_write_curation_video_replaces_a_folder_only_when_told(tmp_path):
    long, short = (sample_curation_video(seed=1, size=16, fps=2, n_shots=n) for n in (4, 1))
    folder = tmp_path / "video"
    write_curation_video(long, folder)
    with pytest.raises(UsageError, match="not empty"):
        write_curation_video(short, folder)
    assert len(list((folder / "frames").iterdir())) == long.n_frames  # kept as it was
    write_curation_video(short, folder, overwrite=True)
    frames = sorted(p.name for p in (folder / "frames").iterdir())
    assert frames == [f"{i:05d}.png" for i in range(short.n_frames)]
    assert short.n_frames < long.n_frames
    assert json.loads((folder / "ground_truth.json").read_text())["n_frames"] == short.n_frames
    assert [p.name for p in tmp_path.iterdir()] == ["video"]
