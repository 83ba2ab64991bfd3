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


def _files(folder):
    """Every file under `folder` with its bytes, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_rerun_with_fewer_images_replaces_the_folder_whole(tmp_path, capsys):
    outdir, fresh = tmp_path / "wr", tmp_path / "fresh"
    assert main(["world", "render", "--n", "5", "--outdir", str(outdir)]) == 0
    assert main(["world", "render", "--n", "2", "--outdir", str(outdir)]) == 0
    assert main(["world", "render", "--n", "2", "--outdir", str(fresh)]) == 0
    assert sorted(_files(outdir)) == ["00000.png", "00001.png", "manifest.jsonl"]
    assert _files(outdir) == _files(fresh)
    # The folder now pairs with its own manifest: `evaluate adherence` scores it.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(r["canonical_caption"] for r in _manifest(outdir)) + "\n")
    capsys.readouterr()
    argv = ["evaluate", "adherence", "--prompts", str(prompts), "--images", str(outdir)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 1.0


def test_a_clip_rerun_with_fewer_frames_keeps_only_the_new_ones(tmp_path):
    outdir = tmp_path / "clip"
    for frames in ("5", "2"):
        assert main(["world", "clip", "--frames", frames, "--outdir", str(outdir)]) == 0
    assert sorted(_files(outdir)) == ["00000.png", "00001.png", "clip.json"]
    assert len(json.loads((outdir / "clip.json").read_text())["frames"]) == 2


def test_a_curation_video_rerun_with_fewer_shots_matches_its_ground_truth(tmp_path):
    outdir, fresh = tmp_path / "cv", tmp_path / "fresh"
    command = ["world", "curation-video", "--size", "16", "--fps", "4"]
    assert main([*command, "--shots", "4", "--outdir", str(outdir)]) == 0
    assert main([*command, "--shots", "1", "--outdir", str(outdir)]) == 0
    assert main([*command, "--shots", "1", "--outdir", str(fresh)]) == 0
    truth = json.loads((outdir / "ground_truth.json").read_text())
    frames = sorted(p.name for p in (outdir / "frames").iterdir())
    assert frames == [f"{i:05d}.png" for i in range(truth["n_frames"])]
    assert _files(outdir) == _files(fresh)


@pytest.mark.parametrize(
    ("action", "earlier"),
    [
        ("render", {"notes.txt": b"mine"}),  # a user's folder
        ("render", {"00000.png": b"png", "manifest.jsonl": b"{}", "notes.txt": b"mine"}),
        ("render", {"00000.png": b"png", "clip.json": b"{}"}),  # another action's output
        ("clip", {"00000.png": b"png", "manifest.jsonl": b"{}"}),
        ("curation-video", {"frames/00000.png": b"png", "frames/.hidden": b"mine"}),
    ],
)
def test_a_folder_that_is_not_an_earlier_output_is_refused_and_kept(
    tmp_path, capsys, action, earlier
):
    outdir = tmp_path / "out"
    for name, data in earlier.items():
        (outdir / name).parent.mkdir(parents=True, exist_ok=True)
        (outdir / name).write_bytes(data)
    assert main(["world", action, "--size", "16", "--outdir", str(outdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--outdir {outdir} holds files that are not a previous `world {action}` output" in err
    assert _files(outdir) == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_outdir_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    assert main(["world", "render", "--n", "1", "--outdir", str(tmp_path / "out")]) == 0
    assert sorted(_files(tmp_path / "out")) == ["00000.png", "manifest.jsonl"]


@pytest.mark.parametrize(
    ("failure", "status"), [(KeyboardInterrupt(), 130), (OSError(28, "No space left"), 2)]
)
def test_an_interrupted_rerun_leaves_the_previous_folder(tmp_path, monkeypatch, failure, status):
    import latentdiff.world.render

    outdir = tmp_path / "wr"
    assert main(["world", "render", "--n", "3", "--outdir", str(outdir)]) == 0
    before = _files(outdir)
    render = latentdiff.world.render.render_scene_image
    calls = []

    def fail_on_the_third(scene, size):
        calls.append(scene)
        if len(calls) == 3:
            raise failure
        return render(scene, size)

    monkeypatch.setattr(latentdiff.world.render, "render_scene_image", fail_on_the_third)
    rerun = ["world", "render", "--n", "5", "--seed", "1", "--outdir", str(outdir)]
    assert main(rerun) == status
    assert len(calls) == 3
    assert _files(outdir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["wr"]  # no temporary folder left
