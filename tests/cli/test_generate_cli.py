import argparse
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentdiff import __version__
from latentdiff.cli import main
from latentdiff.cli.generate import add_guidance_options, guidance_interval
from latentdiff.pipelines.pipeline import Pipeline, load_pipeline

FAST = ["--steps", "2", "--sampler", "ddim", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return load_pipeline(tiny_model_dir, device="cpu")


def generate(model: Path, *args: str) -> int:
    return main(["generate", "--model", str(model), *FAST, *args])


def read_png(path: Path) -> tuple[np.ndarray, str]:
    with Image.open(path) as image:
        return np.array(image.convert("RGB")), image.text["parameters"]


def test_single_prompt_writes_the_png_with_its_parameters(
    tiny_model_dir: Path, pipe: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "circle.png"
    status = generate(
        tiny_model_dir, "a red circle", "--negative-prompt", "a blue square",
        "--seed", "7", "--guidance-scale", "4.5", "--output", str(output),
    )  # fmt: skip
    assert status == 0
    assert capsys.readouterr().err == ""
    pixels, parameters = read_png(output)
    assert parameters == (
        "a red circle\n"
        "Negative prompt: a blue square\n"
        "Steps: 2, Sampler: DDIM, Schedule type: Automatic, CFG scale: 4.5, Seed: 7, "
        f"Size: 16x16, Model: {tiny_model_dir.name}, Version: latentdiff {__version__}"
    )
    (expected,) = pipe(
        "a red circle", negative_prompt="a blue square", num_inference_steps=2,
        guidance_scale=4.5, sampler="ddim", seed=7,
    )  # fmt: skip
    assert np.array_equal(pixels, np.array(expected))


def test_guidance_interval_reaches_the_pipeline_and_the_png(
    tiny_model_dir: Path, pipe: Pipeline, tmp_path: Path
) -> None:
    output = tmp_path / "interval.png"
    assert generate(tiny_model_dir, "a red circle", "--seed", "3", "--guidance-scale", "9",
                    "--guidance-interval", "0.5", "inf", "--output", str(output)) == 0  # fmt: skip
    pixels, parameters = read_png(output)
    assert "CFG scale: 9, Guidance interval: 0.5-inf, Seed: 3," in parameters
    kwargs = {"num_inference_steps": 2, "sampler": "ddim", "seed": 3, "guidance_scale": 9.0}
    (expected,) = pipe("a red circle", guidance_interval=(0.5, math.inf), **kwargs)
    assert np.array_equal(pixels, np.array(expected))


def test_without_guidance_options_the_models_defaults_are_used_and_recorded(
    tiny_model_with_defaults_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "defaults.png"
    assert generate(tiny_model_with_defaults_dir, "a red circle", "--seed", "4",
                    "--output", str(output)) == 0  # fmt: skip
    pixels, parameters = read_png(output)
    assert "CFG scale: 3, CFG Rescale phi: 0.5, Guidance interval: 0.5-inf, Seed: 4," in parameters
    own = load_pipeline(tiny_model_with_defaults_dir, device="cpu")
    (expected,) = own("a red circle", num_inference_steps=2, sampler="ddim", seed=4)
    assert np.array_equal(pixels, np.array(expected))
    assert generate(tiny_model_with_defaults_dir, "a red circle", "--seed", "4", "--guidance-scale",
                    "5", "--guidance-interval", "0", "inf", "--output", str(output)) == 0  # fmt: skip
    assert (
        "CFG scale: 5, CFG Rescale phi: 0.5, Guidance interval: 0-inf, Seed: 4,"
        in read_png(output)[1]
    )


def test_dtype_runs_the_model_in_half_precision(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "half.png"
    assert generate(tiny_model_dir, "a red circle", "--seed", "5", "--dtype", "bf16",
                    "--output", str(output)) == 0  # fmt: skip
    half = load_pipeline(tiny_model_dir, device="cpu", torch_dtype="bf16")
    (expected,) = half("a red circle", num_inference_steps=2, sampler="ddim", seed=5)
    assert np.array_equal(read_png(output)[0], np.array(expected))


def test_unknown_dtype_is_one_line_exit_2(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(
        SystemExit
    ) as exit_info:  # argparse's choices, one line (cli.ArgumentParser)
        generate(tiny_model_dir, "a", "--dtype", "fp64", "--output", str(tmp_path / "x.png"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --dtype: invalid choice: 'fp64'" in err
    assert pngs_under(tmp_path) == []


def test_size_schedule_and_num_images(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "wide.png"
    status = generate(
        tiny_model_dir, "a red circle", "--seed", "3", "--width", "32", "--height", "8",
        "--schedule", "karras", "--num-images", "2", "--output", str(output),
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide-00000.png", "wide-00001.png"]
    for k in range(2):
        pixels, parameters = read_png(tmp_path / f"wide-0000{k}.png")
        assert pixels.shape == (8, 32, 3)
        assert f"Schedule type: Karras, CFG scale: 5, Seed: {3 + k}, Size: 32x8," in parameters


def test_prompts_file_writes_one_png_per_line_in_order(
    tiny_model_dir: Path, pipe: Pipeline, tmp_path: Path
) -> None:
    lines = ["a red circle", "two blue squares", "a green triangle on the right"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # blank line skipped
    outdir = tmp_path / "out" / "nested"
    status = generate(
        tiny_model_dir, "--prompts-file", str(prompts_file), "--outdir", str(outdir),
        "--seed", "100", "--batch-size", "2",
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    for i, line in enumerate(lines):
        pixels, parameters = read_png(outdir / f"{i:05d}.png")
        assert parameters.splitlines()[0] == line
        assert f", Seed: {100 + i}, " in parameters  # image k uses seed + k
        (lone,) = pipe(line, num_inference_steps=2, sampler="ddim", seed=100 + i)
        # Batched and lone runs start from the same noise; CPU kernels may round one pixel
        # level differently at another batch size (see tests/pipelines/test_pipeline.py).
        assert np.abs(pixels.astype(int) - np.array(lone)).max() <= 1


@pytest.fixture(scope="module")
def inpainting_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder of the tiny model's 9-channel inpainting variant, random weights."""
    from latentdiff.checkpoints.bundle import build_components, random_weights, save_components
    from latentdiff.config import inpainting, tiny_config
    from latentdiff.models.tokenizer import build_world_tokenizer

    config = inpainting(tiny_config())
    components = build_components(
        config, build_world_tokenizer(vocab_size=config.text_encoder.vocab_size)
    )
    for name, state in random_weights(config, noise=0.05).items():
        getattr(components, name).load_state_dict(state)
    folder = tmp_path_factory.mktemp("tiny_inpainting")
    save_components(components, folder)
    return folder


def test_an_inpainting_model_generates_from_text(
    inpainting_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SD inpainting checkpoints do text to image as diffusers and A1111 do: repaint it all."""
    output = tmp_path / "inpainting.png"
    status = generate(inpainting_model_dir, "a red circle", "--seed", "2", "--width", "32",
                      "--height", "8", "--output", str(output))  # fmt: skip
    assert status == 0 and capsys.readouterr().err == ""
    pixels, parameters = read_png(output)
    assert pixels.shape == (8, 32, 3) and ", Seed: 2, Size: 32x8, " in parameters
    pipe = load_pipeline(inpainting_model_dir, device="cpu")
    (expected,) = pipe("a red circle", num_inference_steps=2, sampler="ddim", seed=2,
                       height=8, width=32)  # fmt: skip
    assert np.array_equal(pixels, np.array(expected))
    assert pixels.std() > 1  # an image, not a flat colour


@pytest.fixture
def corrupt_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "corrupt"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


P = "a red circle"
BAD_INPUTS = {  # case: (arguments after the model and FAST, expected message)
    "steps 0": ([P, "--steps", "0"], "steps must be at least 1"),
    "guidance nan": ([P, "--guidance-scale", "nan"], "guidance scale must be a finite number"),
    "rescale 2": ([P, "--guidance-rescale", "2"], "guidance rescale must be in [0, 1]"),
    "interval reversed": (
        [P, "--guidance-interval", "5", "1"],
        "guidance interval (LO, HI] needs 0 ≤ LO < HI and a finite LO, got LO=5 HI=1",
    ),
    "unknown sampler": ([P, "--sampler", "plms"], "unknown sampler 'plms'"),
    "width not a multiple": ([P, "--width", "17"], "width must be a positive multiple of 4"),
    "width fits f, not the U-Net": ([P, "--width", "18"], "width must be a positive multiple of 4"),
    "height 0": ([P, "--height", "0"], "error: height must be positive, got 0\n"),
    "width negative": ([P, "--width", "-4"], "error: width must be positive, got -4\n"),
    "steps 1001": ([P, "--steps", "1001"], "error: 1001 steps are too many for the ddim sampler"),
    "steps 1000 dpmpp_2m": (
        [P, "--steps", "1000", "--sampler", "dpmpp_2m"],
        "error: 1000 steps are too many for the dpmpp_2m sampler",
    ),
    "num images 0": ([P, "--num-images", "0"], "num_images must be at least 1"),
    "seed too large": ([P, "--seed", str(2**64)], "seed must be between 0 and"),
    "missing model": ([P, "--model", "{tmp}/no-such-model"], "no model folder"),
    "corrupt weights": ([P, "--model", "{corrupt}"], "cannot read weights"),
    "output dir missing": ([P, "--output", "{tmp}/no-dir/x.png"], "does not exist"),
    "output not png": ([P, "--output", "{tmp}/x.jpg"], "must be a .png file"),
    "outdir under a file": (
        ["--prompts-file", "{prompts}", "--outdir", "{prompts}/out"],
        "cannot create output folder",
    ),
    "prompt and file": ([P, "--prompts-file", "{prompts}", "--outdir", "{tmp}/d"], "not both"),
    "file without outdir": (["--prompts-file", "{prompts}"], "needs --outdir"),
    "missing prompts file": (
        ["--prompts-file", "{tmp}/none.txt", "--outdir", "{tmp}/d"],
        "cannot read prompts file",
    ),
    "empty prompts file": (["--prompts-file", "{empty}", "--outdir", "{tmp}/d"], "has no prompts"),
    "no prompt": ([], "give a prompt"),
    "batch size 0": ([P, "--batch-size", "0"], "--batch-size must be at least 1"),
}


def assert_one_line_error(capsys: pytest.CaptureFixture, status: int, message: str) -> None:
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("latentdiff generate: error: ")
    assert message in err
    assert "Traceback" not in err


def pngs_under(folder: Path) -> list[Path]:
    return list(folder.rglob("*.png"))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str,
    tiny_model_dir: Path,
    corrupt_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    prompts, empty = tmp_path / "prompts.txt", tmp_path / "empty.txt"
    prompts.write_text("a red circle\n")
    empty.write_text("\n  \n")
    extra, message = BAD_INPUTS[case]
    places = {"tmp": tmp_path, "corrupt": corrupt_model, "prompts": prompts, "empty": empty}
    extra = [arg.format(**places) for arg in extra]
    args = ["generate", "--model", str(tiny_model_dir), *FAST, "--output", str(tmp_path / "o.png")]
    status = main([*args, *extra])
    assert_one_line_error(capsys, status, message)
    assert pngs_under(tmp_path) == []


@pytest.mark.parametrize("case", ["steps 1001", "steps 1000 dpmpp_2m", "height 0"])
def test_bad_input_with_the_progress_bar_is_still_one_line(
    case: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every check runs before the bar is drawn (BAD_INPUTS runs with --no-progress)."""
    extra, message = BAD_INPUTS[case]
    loud = [arg for arg in FAST if arg != "--no-progress"]
    output = str(tmp_path / "o.png")
    status = main(["generate", "--model", str(tiny_model_dir), *loud, "--output", output, *extra])
    assert_one_line_error(capsys, status, message)
    assert pngs_under(tmp_path) == []


def test_read_only_output_folder_is_one_line_exit_2(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user (root) who can write to read-only folders")
        status = generate(tiny_model_dir, "a red circle", "--output", str(folder / "x.png"))
        assert_one_line_error(capsys, status, "is not writable")
        assert pngs_under(folder) == []
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("scale", [True, False])
def test_guidance_options_default_to_the_model_and_can_leave_out_the_scale(scale: bool) -> None:
    parser = argparse.ArgumentParser()
    add_guidance_options(parser, scale=scale)
    unset = parser.parse_args([])
    assert (unset.guidance_rescale, guidance_interval(unset)) == (None, None)
    assert hasattr(unset, "guidance_scale") == scale
    given = parser.parse_args(["--guidance-interval", "0.6", "inf", "--guidance-rescale", "0.7"])
    assert guidance_interval(given) == (0.6, math.inf) and given.guidance_rescale == 0.7
    if not scale:  # a caller that takes several scales defines its own option
        with pytest.raises(SystemExit):
            parser.parse_args(["--guidance-scale", "3"])
