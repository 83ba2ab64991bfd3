import json
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.evaluation.scoring import CATEGORIES
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import sample_scene

PROMPTS = [
    "a red circle on the left",
    "three blue squares on a white background",
    "an orange circle above a green triangle",
]


def write_images(folder, prompts, seed=0, size=64):
    """Ground-truth renderings of `prompts`, named as `generate` names its outputs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for k, prompt in enumerate(prompts):
        image = render_scene(sample_scene(parse_caption(prompt), rng), size)
        Image.fromarray(image).save(folder / f"{k:05d}.png")


@pytest.fixture
def run(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")  # a trailing blank line is skipped
    write_images(tmp_path / "images", PROMPTS)

    def adherence(*extra, prompts_file=prompts, images=tmp_path / "images"):
        argv = ["evaluate", "adherence", "--prompts", str(prompts_file), "--images", str(images)]
        return main([*argv, *extra])

    return adherence


def test_adherence_json_has_the_six_categories_and_overall(run, capsys):
    assert run("--json") == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # 64 px: no size warning
    result = json.loads(captured.out)
    assert list(result) == [*CATEGORIES, "overall"]
    assert result == {
        "single": 1.0,
        "counting": 1.0,
        "two_object": 1.0,
        "color_binding": 1.0,
        "position": 1.0,
        "held_out": 1.0,
        "overall": 1.0,
    }


def test_adherence_table_and_null_for_categories_without_prompts(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    write_images(tmp_path / "images", ["a blue circle"])
    argv = ["evaluate", "adherence", "--prompts", str(tmp_path / "p.txt")]
    assert main([*argv, "--images", str(tmp_path / "images")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["single", "0.000", "0/1"]
    assert table[2].split() == ["counting", "-", "0/0"]
    assert table[-1].split() == ["overall", "0.000"]
    assert main([*argv, "--images", str(tmp_path / "images"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["single"] == 0.0 and result["counting"] is None and result["overall"] == 0.0


def test_images_per_prompt_pairs_consecutive_images_with_one_prompt(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    write_images(
        tmp_path / "images", ["a red circle", "a red circle", "a blue square", "a red square"]
    )
    argv = ["evaluate", "adherence", "--prompts", str(tmp_path / "p.txt"), "--images"]
    assert main([*argv, str(tmp_path / "images"), "--images-per-prompt", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["single"] == 0.75


def test_an_unparseable_prompt_is_a_warning_and_counts_wrong(run, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([PROMPTS[0], "a pink circle", PROMPTS[2]]) + "\n")
    assert run("--json", prompts_file=bad) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "warning: prompt 2" in captured.err and "pink" in captured.err
    result = json.loads(captured.out)
    assert result["single"] == 0.5  # the good single prompt right, the bad one wrong
    assert result["counting"] == 0.0


def expect_usage_error(capsys, status, *words):
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("latentdiff evaluate: error:")
    for word in words:
        assert word in captured.err


def test_missing_prompts_file(run, tmp_path, capsys):
    expect_usage_error(capsys, run(prompts_file=tmp_path / "nope.txt"), "nope.txt")


def test_a_file_with_no_parseable_prompt(run, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("hello world\na pink circle\n")
    expect_usage_error(capsys, run(prompts_file=bad), "no prompt", "hello")


def test_missing_image_folder(run, tmp_path, capsys):
    expect_usage_error(capsys, run(images=tmp_path / "nowhere"), "nowhere")


def test_missing_image(run, tmp_path, capsys):
    (tmp_path / "images" / "00001.png").unlink()
    expect_usage_error(capsys, run(), "00001.png")


def test_more_images_than_prompts(run, tmp_path, capsys):
    write_images(tmp_path / "images", [*PROMPTS, PROMPTS[0]])
    expect_usage_error(capsys, run(), "4 numbered images", "3 expected")


def test_unreadable_image(run, tmp_path, capsys):
    (tmp_path / "images" / "00002.png").write_text("not a png")
    expect_usage_error(capsys, run(), "00002.png")


def test_bad_images_per_prompt(run, capsys):
    expect_usage_error(capsys, run("--images-per-prompt", "0"), "--images-per-prompt")


def test_suite_prints_or_writes_the_suite(tmp_path, capsys):
    assert main(["evaluate", "suite"]) == 0
    assert capsys.readouterr().out.splitlines() == evaluation_suite()
    assert main(["evaluate", "suite", "--output", str(tmp_path / "suite.txt")]) == 0
    assert (tmp_path / "suite.txt").read_text().splitlines() == evaluation_suite()
    status = main(["evaluate", "suite", "--output", str(tmp_path / "no" / "suite.txt")])
    expect_usage_error(capsys, status, "suite.txt")


@pytest.mark.parametrize("size", [16, 32, 39])
def test_images_too_small_for_the_detector_are_refused(run, tmp_path, capsys, size):
    write_images(tmp_path / "images", PROMPTS, size=size)
    expect_usage_error(capsys, run(), "00000.png", f"{size}×{size} px", "at least 40 px")


@pytest.mark.parametrize("size", [40, 47])
def test_images_near_the_detectors_limit_are_scored_with_one_warning(run, tmp_path, capsys, size):
    write_images(tmp_path / "images", PROMPTS, size=size)
    assert run("--json") == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1  # once, not once per image
    assert captured.err.startswith("latentdiff evaluate: warning:")
    assert f"{size}×{size} px" in captured.err and "below 48 px" in captured.err
    assert json.loads(captured.out)["overall"] == 1.0


def test_a_png_declaring_a_huge_size_is_a_usage_error(run, tmp_path, capsys):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 20000×20000 RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    (tmp_path / "images" / "00001.png").write_bytes(png)
    expect_usage_error(capsys, run(), "cannot read image", "00001.png", "decompression bomb")


def test_suite_output_is_written_atomically(tmp_path, capsys, monkeypatch):
    output = tmp_path / "suite.txt"
    output.write_text("the old suite\n")
    write_text = pathlib.Path.write_text

    def disk_full_halfway(path, text, *args, **kwargs):
        write_text(path, text[:10], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full_halfway)
    expect_usage_error(capsys, main(["evaluate", "suite", "--output", str(output)]), "No space")
    assert output.read_text() == "the old suite\n"
    assert [p.name for p in tmp_path.iterdir()] == ["suite.txt"]
