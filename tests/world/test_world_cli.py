import json

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import sample_scenes


def _manifest(outdir):
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def test_render_writes_images_and_manifest(tmp_path, capsys):
    outdir = tmp_path / "images"
    assert (
        main(
            ["world", "render", "--n", "6", "--size", "32", "--seed", "3", "--outdir", str(outdir)]
        )
        == 0
    )
    assert "wrote 6 images" in capsys.readouterr().out
    records = _manifest(outdir)
    scenes = sample_scenes(6, seed=3)
    assert [r["file"] for r in records] == [f"{i:05d}.png" for i in range(6)]
    assert sorted(p.name for p in outdir.iterdir()) == [r["file"] for r in records] + [
        "manifest.jsonl"
    ]
    for record, scene in zip(records, scenes, strict=True):
        assert set(record) == {"file", "caption", "canonical_caption", "background", "objects"}
        assert record["canonical_caption"] == scene.canonical_caption
        assert record["caption"] == scene.caption
        assert record["background"] == scene.background
        parse_caption(record["canonical_caption"])
        image = np.asarray(Image.open(outdir / record["file"]))
        np.testing.assert_array_equal(image, render_scene(scene, 32))
        for obj, truth in zip(record["objects"], scene.objects, strict=True):
            assert set(obj) == {"color", "shape", "size", "center", "bbox"}
            assert (obj["color"], obj["shape"], obj["size"]) == (
                truth.color,
                truth.shape,
                truth.size,
            )
            np.testing.assert_allclose(obj["center"], np.array(truth.center) / 2, atol=0.006)
            np.testing.assert_allclose(obj["bbox"], np.array(truth.bbox) / 2, atol=0.006)


def test_render_is_reproducible(tmp_path):
    for name in ("a", "b"):
        main(["world", "render", "--n", "3", "--seed", "9", "--outdir", str(tmp_path / name)])
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "many"], "--n must be an integer"),
        (["--size", "8"], "--size must be at least 16"),
        (["--size", "3.5"], "--size must be an integer"),
    ],
)
def test_render_bad_input_is_one_line_and_status_2(tmp_path, capsys, arguments, message):
    assert main(["world", "render", *arguments, "--outdir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("latentdiff world: error:")


def test_render_unwritable_outdir_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["world", "render", "--n", "1", "--outdir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create --outdir" in err


def test_clip_writes_frames_and_centres(tmp_path):
    outdir = tmp_path / "clip"
    assert (
        main(
            [
                "world",
                "clip",
                "--seed",
                "2",
                "--size",
                "32",
                "--frames",
                "5",
                "--outdir",
                str(outdir),
            ]
        )
        == 0
    )
    record = json.loads((outdir / "clip.json").read_text())
    assert len(list(outdir.glob("*.png"))) == 5 == len(record["frames"])
    parse_caption(record["caption"])
    assert record["size"] == 32
    assert all(0 <= v <= 32 for frame in record["frames"] for o in frame for v in o["center"])


def test_curation_video_writes_frames_and_ground_truth(tmp_path):
    outdir = tmp_path / "video"
    command = [
        "world",
        "curation-video",
        "--seed",
        "1",
        "--size",
        "32",
        "--fps",
        "2",
        "--shots",
        "3",
    ]
    assert main([*command, "--outdir", str(outdir)]) == 0
    truth = json.loads((outdir / "ground_truth.json").read_text())
    assert len(list((outdir / "frames").glob("*.png"))) == truth["n_frames"]
    assert len(truth["shots"]) == 3 and len(truth["cut_frames"]) == 2


@pytest.mark.parametrize("action", ["render", "clip", "curation-video"])
def test_every_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["world", action, "--help"])
    assert exit_.value.code == 0
    assert "--outdir" in capsys.readouterr().out
