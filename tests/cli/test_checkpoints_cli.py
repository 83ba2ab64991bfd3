"""`latentdiff info`, `convert` and `generate --model` end to end, on tiny random SD checkpoints.

Two models, written once per module as diffusers folders and as original single files: one
shaped like SD 1.x (CLIP text, 1×1-conv projections, ε) and one like SD 2.x (OpenCLIP text at
its penultimate layer, linear projections, v-prediction). Their text widths are SD's own, 768
and 1024, because that is what tells the families apart; everything else is tiny.
"""

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.checkpoints.bundle import random_weights
from latentdiff.checkpoints.diffusers_folder import drop_unused_text_layer, write_diffusers_folder
from latentdiff.checkpoints.single_file import write_single_file
from latentdiff.checkpoints.sources import read_model
from latentdiff.cli import main
from latentdiff.config import DiffusionConfig, ModelConfig, tiny_config
from latentdiff.diffusion.schedules import SchedulerSettings

VOCAB_SIZE = 514  # conftest's byte-level CLIP vocabulary
EOS_ID = 513
FAST = ["--steps", "2", "--sampler", "ddim", "--no-progress", "--device", "cpu", "--seed", "3"]
PROMPT = "a red cube"


def sd1_like() -> ModelConfig:
    """SD 1.x in miniature: CLIP text (quick_gelu, last layer, pad = eos), 8 heads by count."""
    base = tiny_config()
    text = replace(
        base.text_encoder,
        vocab_size=VOCAB_SIZE,
        context_length=77,
        width=768,
        layers=1,
        heads=12,
        pad_token_id=EOS_ID,
    )
    return replace(base, unet=replace(base.unet, context_dim=768), text_encoder=text)


def sd2_like() -> ModelConfig:
    """SD 2.x in miniature: OpenCLIP text (gelu, penultimate layer, pad "!" = 0), 8-wide heads,
    linear projections, v-prediction."""
    base = tiny_config()
    unet = replace(
        base.unet,
        attention_levels=(True, True),
        num_heads=None,
        head_dim=8,
        context_dim=1024,
        use_linear_projection=True,
    )
    text = replace(
        base.text_encoder,
        vocab_size=VOCAB_SIZE,
        context_length=77,
        width=1024,
        layers=2,
        heads=16,
        activation="gelu",
        output_layer="penultimate",
        pad_token_id=0,
    )
    diffusion = DiffusionConfig(prediction_type="v_prediction")
    return replace(base, unet=unet, text_encoder=text, diffusion=diffusion)


CONFIGS = {"sd1": sd1_like, "sd2": sd2_like}
PAD_TOKENS = {"sd1": "<|endoftext|>", "sd2": "!"}


@dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    states: dict[str, dict[str, torch.Tensor]]
    folder: Path
    """A diffusers folder (SD 2's unused last text layer dropped, as diffusers stores it)."""
    single_file: Path
    """An original single file of the same weights (with SD 2's last text layer)."""
    tokenizer: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, sd_tokenizer_folder) -> dict[str, Checkpoint]:
    root = tmp_path_factory.mktemp("checkpoints")
    result = {}
    for seed, (name, make_config) in enumerate(CONFIGS.items()):
        config = make_config()
        states = random_weights(config, seed, noise=0.05)
        tokenizer = sd_tokenizer_folder(root / f"{name}-tokenizer", PAD_TOKENS[name])
        folder, single_file = root / name, root / f"{name}.safetensors"
        write_diffusers_folder(
            folder, config, states, scheduler=SchedulerSettings(), tokenizer_dir=tokenizer
        )
        write_single_file(single_file, config, states)
        result[name] = Checkpoint(config, states, folder, single_file, tokenizer)
    return result


def run(capsys: pytest.CaptureFixture, *args: str | Path) -> str:
    """`latentdiff ARGS` succeeds silently on stderr; its stdout."""
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    assert (status, err) == (0, ""), err
    return out


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].keys() == expected[name].keys(), name
        for key, tensor in expected[name].items():
            assert actual[name][key].dtype == tensor.dtype, key
            assert torch.equal(actual[name][key], tensor), f"{name}: {key}"


def counts(state: dict[str, torch.Tensor]) -> int:
    return sum(tensor.numel() for tensor in state.values())


# ── info ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("kind", ["folder", "single_file"])
def test_info_names_format_version_prediction_counts_and_dtype(models, capsys, name, kind):
    model = models[name]
    lines = run(capsys, "info", getattr(model, kind)).splitlines()
    states = dict(model.states)
    if kind == "folder":  # diffusers folders hold SD 2's text encoder without its unused layer
        _, states["text_encoder"] = drop_unused_text_layer(
            model.config.text_encoder, states["text_encoder"]
        )
    expected = [
        f"format: {'diffusers' if kind == 'folder' else 'single-file'}",
        f"version: {'SD 1.x' if name == 'sd1' else 'SD 2.x'}",
        f"prediction type: {'epsilon' if name == 'sd1' else 'v_prediction'}",
        *(f"parameters {part}: {counts(states[part]):,}" for part in states),
        f"parameters total: {sum(counts(state) for state in states.values()):,}",
        "dtype: float32",
        "sampling defaults: guidance 5, rescale 0, guided at every step",  # SD: the project's
    ]
    for line in expected:
        assert line in lines
    assert lines[0] == f"path: {getattr(model, kind)}"


def test_info_shows_a_models_own_sampling_defaults(capsys, tiny_model_with_defaults_dir):
    lines = run(capsys, "info", tiny_model_with_defaults_dir).splitlines()
    assert "sampling defaults: guidance 3, rescale 0.5, guided at σ in (0.5, inf]" in lines


def test_info_adds_no_assumption_note_to_a_file_that_records_its_prediction_type(
    models, capsys, tmp_path
):
    model = models["sd2"]
    config = replace(model.config, diffusion=DiffusionConfig(prediction_type="epsilon"))
    write_single_file(tmp_path / "base.safetensors", config, model.states)
    lines = run(capsys, "info", tmp_path / "base.safetensors").splitlines()
    assert "prediction type: epsilon" in lines
    assert not [line for line in lines if line.startswith("note:")]


# ── convert ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folder_to_single_file_to_folder_is_bit_exact(models, capsys, tmp_path, name):
    model = models[name]
    single, back = tmp_path / "model.safetensors", tmp_path / "back"
    out = run(capsys, "convert", model.folder, single, "--to", "single-file")
    assert out == f"wrote {single} (single-file)\n"
    run(capsys, "convert", single, back, "--to", "diffusers", "--tokenizer", model.tokenizer)
    original, again = read_model(model.folder), read_model(back)
    assert again.config == original.config
    assert again.scheduler == original.scheduler
    assert_same_weights(again.states, original.states)
    for file in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        assert (back / "tokenizer" / file).read_bytes() == (model.tokenizer / file).read_bytes()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_single_file_to_folder_to_single_file_is_bit_exact(models, capsys, tmp_path, name):
    """Except SD 2's last text layer, which no SD 2 loader uses and diffusers folders do not
    store: the file written back holds it as an identity block of zeros."""
    model = models[name]
    folder, again_path = tmp_path / "folder", tmp_path / "again.safetensors"
    run(capsys, "convert", model.single_file, folder, "--to", "diffusers", "--tokenizer",
        model.tokenizer)  # fmt: skip
    run(capsys, "convert", folder, again_path, "--to", "single-file")
    original, again = read_model(model.single_file), read_model(again_path)
    assert again.config == original.config
    expected = original.states
    if name == "sd2":
        unused = f"blocks.{model.config.text_encoder.layers - 1}."
        text = dict(expected["text_encoder"])
        for key, tensor in text.items():
            if key.startswith(unused):
                text[key] = torch.zeros_like(tensor)
        expected = {**expected, "text_encoder": text}
    assert_same_weights(again.states, expected)


def test_dtype_fp16_stores_fp16(models, capsys, tmp_path):
    model = models["sd1"]
    half_file, half_folder = tmp_path / "half.safetensors", tmp_path / "half"
    run(capsys, "convert", model.folder, half_file, "--to", "single-file", "--dtype", "fp16")
    run(capsys, "convert", model.single_file, half_folder, "--to", "diffusers", "--dtype", "fp16",
        "--tokenizer", model.tokenizer)  # fmt: skip
    half = {name: {k: v.half() for k, v in s.items()} for name, s in model.states.items()}
    for path in (half_file, half_folder):
        assert_same_weights(read_model(path).states, half)
        assert "dtype: float16" in run(capsys, "info", path).splitlines()


# ── generate --model ──────────────────────────────────────────────────────────────────────


def generate(capsys: pytest.CaptureFixture, output: Path, *args: str | Path) -> np.ndarray:
    run(capsys, "generate", *args, *FAST, "--output", output)
    with Image.open(output) as image:
        return np.array(image.convert("RGB"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folder_and_single_file_generate_the_same_pixels(models, capsys, tmp_path, name):
    model = models[name]
    from_folder = generate(capsys, tmp_path / "a.png", PROMPT, "--model", model.folder)
    from_file = generate(capsys, tmp_path / "b.png", PROMPT, "--model", model.single_file,
                         "--tokenizer", model.tokenizer)  # fmt: skip
    sliced = generate(capsys, tmp_path / "c.png", PROMPT, "--model", model.folder,
                      "--attention-slice", "2")  # fmt: skip
    assert from_folder.shape == (16, 16, 3)
    assert 20 < from_folder.std()  # an image, not a flat or saturated field
    assert np.array_equal(from_file, from_folder)
    assert np.abs(sliced.astype(int) - from_folder).max() <= 1


def test_emphasis_changes_the_image(models, capsys, tmp_path):
    folder = models["sd2"].folder
    plain = generate(capsys, tmp_path / "plain.png", "a red cube", "--model", folder)
    emphasized = generate(capsys, tmp_path / "red.png", "a (red:1.5) cube", "--model", folder)
    assert np.abs(emphasized.astype(int) - plain).max() > 10


def test_prompts_longer_than_77_tokens_are_encoded_whole(models, capsys, tmp_path):
    """Two prompts that differ only after token 75 give different images: nothing was cut."""
    folder = models["sd2"].folder
    head = " ".join(["cube"] * 20)  # 80 byte-level tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a truncated prompt would warn
        blue = generate(capsys, tmp_path / "blue.png", head + " blue", "--model", folder)
        green = generate(capsys, tmp_path / "green.png", head + " green", "--model", folder)
    assert np.abs(blue.astype(int) - green).max() > 10


# ── Bad input: exit status 2, one line naming the problem, nothing written ─────────────────


class Callback:
    """Stands for the training objects full Lightning checkpoints pickle beside the weights."""


@pytest.fixture(scope="module")
def bad_files(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = models["sd1"].single_file.read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("a red cube\n")
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}
    torch.save({"state_dict": state, "callbacks": Callback()}, root / "lightning.ckpt")
    return {"cut": root / "cut.safetensors", "txt": root / "notes.txt",
            "pickle": root / "lightning.ckpt"}  # fmt: skip


TO_FOLDER = ("{out}/model", "--to", "diffusers", "--tokenizer", "{tok}")
BAD_INPUTS = {  # case: (arguments, expected message); {out} already holds keep.txt
    "single file without --tokenizer": (
        ("generate", PROMPT, "--model", "{file}", *FAST, "--output", "{out}/x.png"),
        "sd1.safetensors holds no tokenizer: pass --tokenizer FOLDER",
    ),
    "single file to a folder without --tokenizer": (
        ("convert", "{file}", "{out}/model", "--to", "diffusers"),
        "sd1.safetensors holds no CLIP tokenizer, which a diffusers folder needs",
    ),
    "missing tokenizer folder": (
        (
            "generate",
            PROMPT,
            "--model",
            "{file}",
            "--tokenizer",
            "{out}/none",
            *FAST,
            "--output",
            "{out}/x.png",
        ),
        "no CLIP tokenizer at",
    ),  # fmt: skip
    "truncated single file": (
        ("convert", "{cut}", *TO_FOLDER),
        "cut.safetensors: cannot read safetensors file",
    ),
    "truncated single file, generate": (
        (
            "generate",
            PROMPT,
            "--model",
            "{cut}",
            "--tokenizer",
            "{tok}",
            *FAST,
            "--output",
            "{out}/x.png",
        ),
        "cut.safetensors: cannot read safetensors file",
    ),  # fmt: skip
    "not a checkpoint": (
        ("info", "{txt}"),
        "notes.txt: not a checkpoint file (expected one of .safetensors, .ckpt, .pt, .pth)",
    ),
    "not a checkpoint, convert": (("convert", "{txt}", *TO_FOLDER), "not a checkpoint file"),
    "existing output folder": (
        ("convert", "{file}", "{out}", "--to", "diffusers", "--tokenizer", "{tok}"),
        "out exists; choose a new output path",
    ),
    "existing output file": (
        ("convert", "{folder}", "{out}/keep.txt", "--to", "single-file"),
        "keep.txt exists; choose a new output path",
    ),
    "latentdiff model folder to diffusers": (
        ("convert", "shapes", *TO_FOLDER),
        "convert writes latentdiff folders from latentdiff folders, and diffusers folders",
    ),
    "SD checkpoint to latentdiff": (
        ("convert", "{folder}", "{out}/new", "--to", "latentdiff"),
        "convert writes latentdiff folders from latentdiff folders",
    ),
    "vae not an autoencoder": (
        ("info", "shapes", "--vae", "{out}"),
        "out holds no autoencoder: expected a finished `train autoencoder` run",
    ),
    "single file not .safetensors": (
        ("convert", "{folder}", "{out}/model.ckpt", "--to", "single-file"),
        "model.ckpt: single files are written as .safetensors only",
    ),
    "unsafe pickle": (
        ("convert", "{pickle}", *TO_FOLDER),
        "lightning.ckpt: this pickle needs unsafe unpickling",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, models, bad_files, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")  # makes `out` an existing, non-empty output
    model = models["sd1"]
    places = {"out": out, "tok": model.tokenizer, "file": model.single_file,
              "folder": model.folder, **bad_files}  # fmt: skip
    args, message = BAD_INPUTS[case]
    status = main([arg.format(**places) for arg in args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"latentdiff {args[0]}: error: "), err
    assert message in err
    assert "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == [out, out / "keep.txt"]  # no output, no temporary
    assert (out / "keep.txt").read_text() == "mine\n"
